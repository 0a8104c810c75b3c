"""``python -m dispatch.cli``: the `wakala` console script."""

import sys

from dispatch.cli import main

sys.exit(main())
