"""Plugin tests: makes the shared helper modules of this folder (``recurrent_helpers``) importable
from every plugin's test folder."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
