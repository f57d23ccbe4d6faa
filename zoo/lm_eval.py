"""`python -m zoo.lm_eval ...`: lm-eval's own command line with the `zoo` model type registered.

The integration lives in `zoo.evals.lm_eval` (this command: `zoo.evals.lm_eval.cli`); this module is only the
documented entry point."""

from __future__ import annotations

import sys

from zoo.evals.lm_eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
