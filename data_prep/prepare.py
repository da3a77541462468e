#!/usr/bin/env python
"""Tokenize jsonl documents per domain into MDS token rows + manifest.json (ast_ds.data.prepare).

Example (RedPajama layout, one folder per domain)::

    python data_prep/prepare.py --input wiki=/data/rp/wikipedia --input github=/data/rp/github \\
        --tokenizer /models/llama-2-7b/tokenizer.model --seq_len 4096 --eval_fraction 0.005 \\
        --workers 16 --out /data/rp_tok
"""

import sys

try:
    from ast_ds.data.prepare import main
except ModuleNotFoundError as e:  # ast_ds not installed in this Python
    from _not_installed import exit_with_help  # beside this script (its folder is importable when run as a script)

    exit_with_help(e)

if __name__ == "__main__":
    sys.exit(main())
