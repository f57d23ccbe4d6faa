"""Shared pytest fixtures. Helpers themselves live in ``tests/helpers.py`` so they can also be imported."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import assert_close as _assert_close


@pytest.fixture
def assert_close() -> Callable[..., None]:
    """The shared ``assert_close(actual, expected, rtol, atol, name)`` (see ``tests/helpers.py``)."""
    return _assert_close
