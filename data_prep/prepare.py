#!/usr/bin/env python
"""Tokenize jsonl documents per domain into MDS token rows + manifest.json (ast_ds.data.prepare).

Example (RedPajama layout, one folder per domain)::

    python data_prep/prepare.py --input wiki=/data/rp/wikipedia --input github=/data/rp/github \\
        --tokenizer /models/llama-2-7b/tokenizer.model --seq_len 4096 --eval_fraction 0.005 \\
        --workers 16 --out /data/rp_tok
"""

import os
import sys

# Run as a script, this folder is sys.path[0]; our inspect.py would then shadow the standard library's
# inspect module for everything imported below. Put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

from ast_ds.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
