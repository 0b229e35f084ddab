"""``python -m dcnv2_mx``: see dcnv2_mx.tools.cli."""
import sys

from dcnv2_mx.tools.cli import main

sys.exit(main())
