"""Collection rules and shared fixtures for the kernel tests.

triton is a dependency on Linux, so there the Triton test modules always run (a missing install fails
loudly at import); on platforms without Triton wheels they are not collected at all.
"""

from __future__ import annotations

import sys

import pytest
import torch

collect_ignore_glob = [] if sys.platform.startswith("linux") else ["test_triton_*.py"]


@pytest.fixture(scope="module")
def triton_interpreter():
    """Without a GPU, run the kernels in Triton's interpreter: TRITON_INTERPRET=1 must be set before the kernel
    modules are imported (they are, lazily, by the first Triton call). Restored after the module, so other test
    modules see the environment they started with. One intra-op thread: the tensors are tiny and OpenMP threads
    only add contention. Each Triton test module asks for it with
    ``pytestmark = pytest.mark.usefixtures("triton_interpreter")``."""
    if torch.cuda.is_available():
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        yield
    torch.set_num_threads(threads)
