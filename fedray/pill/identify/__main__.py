"""python -m fedray.pill.identify identify PHOTO ... (the same as the `fedray` console script)."""

import sys

from fedray.pill.identify.cli import console

sys.exit(console())
