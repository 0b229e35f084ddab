"""``python -m dcnv2_mx``: see dcnv2_mx.cli."""
import sys

from dcnv2_mx.cli import main

sys.exit(main())
