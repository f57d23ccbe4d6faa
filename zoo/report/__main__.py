"""`python -m zoo.report`."""

import sys

from zoo.report.chart import main

sys.exit(main())
