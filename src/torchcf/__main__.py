"""``python -m torchcf``."""

import sys

from torchcf.cli import main

sys.exit(main())
