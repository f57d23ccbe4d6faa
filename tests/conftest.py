"""Shared pytest fixtures. Helpers themselves live in ``tests/helpers.py`` so they can also be imported."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from tests.helpers import assert_close as _assert_close

# Triton decides at `@triton.jit` time (when a kernel module is first imported) whether a kernel runs in its
# interpreter. Any test may import the kernel modules first (a model built with backend=auto does), so without
# a GPU the interpreter is switched on for the whole session, not only by the Triton test modules' fixtures.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def assert_close() -> Callable[..., None]:
    """The shared ``assert_close(actual, expected, rtol, atol, name)`` (see ``tests/helpers.py``)."""
    return _assert_close
