#!/usr/bin/env python
"""Counts per domain and split of a prepared corpus, and N decoded rows per domain.

    python data_prep/inspect.py DIR [--rows N] [--split train|eval]
"""

import os
import sys

# This file is named like the standard library's inspect module; run as a script, its folder is
# sys.path[0] and would shadow that module for everything imported below. Put the repository root there.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

import argparse  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="data_prep/inspect.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="output folder of data_prep/prepare.py")
    p.add_argument("--rows", type=int, default=2, help="decoded rows to show per domain (0 = counts only)")
    p.add_argument("--split", default="train", choices=["train", "eval"], help="split the rows come from")
    args = p.parse_args(argv)
    from ast_ds.data.summary import summarize

    try:
        print(summarize(args.dir, rows=args.rows, split=args.split))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
