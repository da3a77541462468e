"""What ``data_prep/summarize.py`` prints: the manifest's counts and a few decoded rows per domain.

``summarize(...)`` builds the text; ``build_arg_parser`` / ``main`` are the script's command line.
"""

from __future__ import annotations

import argparse
import sys

from ast_ds.data.corpus import Corpus
from ast_ds.data.manifest import format_counts


def summarize(data_dir: str, *, rows: int = 2, split: str = "train", max_chars: int = 400) -> str:
    """Counts per domain and split, then the first ``rows`` rows of each domain's ``split``, decoded
    with the corpus's own tokenizer copy."""
    corpus = Corpus(data_dir)
    manifest = corpus.manifest
    out = [f"{data_dir}", format_counts(manifest)]
    if rows <= 0:
        return "\n".join(out)
    tok = corpus.tokenizer()
    for domain, entry in manifest["domains"].items():
        n = min(rows, entry[split]["rows"])
        if n == 0:
            continue
        for i, row in enumerate(corpus.split(domain, split).rows(range(n))):
            text = tok.decode(row)
            text = text if len(text) <= max_chars else text[:max_chars] + " …"
            out.append(f"\n--- {domain}/{split} row {i} ({len(row)} tokens, first ids {row[:8].tolist()}) ---\n{text}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Command line (data_prep/summarize.py)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data_prep/summarize.py",
                                description="Counts per domain and split of a prepared corpus, and N decoded rows "
                                            "per domain.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="output folder of data_prep/prepare.py")
    p.add_argument("--rows", type=int, default=2, help="decoded rows to show per domain (0 = counts only)")
    p.add_argument("--split", default="train", choices=["train", "eval"], help="split the rows come from")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        print(summarize(args.dir, rows=args.rows, split=args.split))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
