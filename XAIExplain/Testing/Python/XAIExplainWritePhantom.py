"""CTest fixture: the phantom series of LIDC-IDRI-0078 for the batch test, written by the library's command
line in Slicer's Python (``Slicer --python-script XAIExplainWritePhantom.py OUT``)."""
import sys

import slicer
from xaiexplain.apps.cli import main

slicer.util.exit(main(["phantom", "--scans", "LIDC-IDRI-0078", "--out", sys.argv[1]]))
