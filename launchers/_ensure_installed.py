"""Imported first by every launcher: a clear error, not a traceback, when ``ast_ds`` is not installed.

The README's commands (``bash launchers/demo.sh``, ``bash tests/run.sh``) create ``.venv`` and install
the package into it; launchers never change the import path to find it.
"""

import importlib.util
import sys

if importlib.util.find_spec("ast_ds") is None:
    sys.exit("error: the ast_ds package is not installed in this Python "
             f"({sys.executable}). From the repository root run `bash tests/run.sh` (creates .venv and installs it) "
             "and then `source .venv/bin/activate`, or `pip install -e .` in your own environment.")
