"""Perplexity of an exported model on a text/jsonl file (WikiText-2 protocol: documents joined by blank
lines, non-overlapping windows) or on a prepared MDS folder's eval splits (per domain).

    python launchers/evaluate.py --model hf/llama2_7b_24 --data wikitext2_test.txt --seq_len 4096 --out ppl.json
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model folder (e.g. the output of consolidate.py)")
    p.add_argument("--data", required=True, help="a .txt/.jsonl file, or a data_prep output folder")
    p.add_argument("--seq_len", type=int, default=2048, help="window length for text files")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--out", help="write the result JSON here")
    args = p.parse_args(argv)
    from ast_ds.evaluate import perplexity

    try:
        result = perplexity(args.model, args.data, seq_len=args.seq_len, batch_size=args.batch_size,
                            device=args.device, max_windows=args.max_windows)
    except ValueError as e:
        sys.exit(f"error: {e}")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
