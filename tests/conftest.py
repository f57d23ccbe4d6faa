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


@pytest.fixture(scope="session")
def token_corpus(tmp_path_factory):
    """A small pre-tokenized corpus (byte tokens, the first ~100 kB of the offline corpus) for configs that train on
    `data=tokens` (`tests.helpers.experiment_overrides`)."""
    from zoo.config import compose, typed
    from zoo.data import lm_documents, prepare_corpus

    cfg = typed(compose(["data=text", "data.max_bytes=100000", "data.val_fraction=0.3"]).data)
    return prepare_corpus(*lm_documents(cfg), tmp_path_factory.mktemp("corpus") / "bytes")
