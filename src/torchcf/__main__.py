"""``python -m torchcf``."""

import sys

from torchcf.cli.main import main

sys.exit(main())
