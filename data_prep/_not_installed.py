"""What the data_prep scripts say when ``ast_ds`` cannot be imported (stdlib only: ast_ds is what is missing)."""

import os
import sys
from typing import NoReturn


def exit_with_help(error: ModuleNotFoundError) -> NoReturn:
    """Print why ``ast_ds`` (or a package it needs) did not import and how to install it; exit with status 2."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    what = "the ast_ds package is" if (error.name or "").split(".")[0] == "ast_ds" else \
        f"{error.name!r}, which ast_ds needs, is"
    print(f"error: {what} not installed in this Python ({sys.executable}).\n"
          f"Fix: from the repository root ({root}) run `bash tests/run.sh` (sets up .venv with the package) and "
          f"`source .venv/bin/activate`, or install it into this Python with `pip install -e .`", file=sys.stderr)
    sys.exit(2)
