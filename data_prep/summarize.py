#!/usr/bin/env python
"""Counts per domain and split of a prepared corpus, and N decoded rows per domain (ast_ds.data.summary).

    python data_prep/summarize.py DIR [--rows N] [--split train|eval]
"""

import sys

try:
    from ast_ds.data.summary import main
except ModuleNotFoundError as e:  # ast_ds not installed in this Python
    from _not_installed import exit_with_help  # beside this script (its folder is importable when run as a script)

    exit_with_help(e)

if __name__ == "__main__":
    sys.exit(main())
