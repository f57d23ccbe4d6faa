"""Collection rules for the kernel tests.

triton is a dependency on Linux, so there the Triton test modules always run (a missing install fails
loudly at import); on platforms without Triton wheels they are not collected at all.
"""

from __future__ import annotations

import sys

collect_ignore_glob = [] if sys.platform.startswith("linux") else ["test_triton_*.py"]
