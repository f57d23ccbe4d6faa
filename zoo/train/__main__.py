"""`python -m zoo.train`."""

import sys

from zoo.train.loop import main

sys.exit(main())
