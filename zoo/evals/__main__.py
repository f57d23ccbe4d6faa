"""`python -m zoo.evals`."""

import sys

from zoo.evals.cli import main

sys.exit(main())
