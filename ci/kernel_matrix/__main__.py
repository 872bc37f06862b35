"""``python -m ci.kernel_matrix``: the driver's entry point (see cli.py)."""
import sys

from .cli import main

sys.exit(main())
