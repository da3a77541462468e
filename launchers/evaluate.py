"""Perplexity of an exported model on a text/jsonl file (WikiText-2 protocol: documents joined by blank
lines, non-overlapping windows) or on a prepared MDS folder's eval splits (per domain).

    python launchers/evaluate.py --model hf/llama2_7b_24 --data wikitext2_test.txt --seq_len 4096 --out ppl.json
    python launchers/evaluate.py --model hf/llama2_7b_24 --lm_eval piqa,arc_easy,hellaswag --out zeroshot.json

--lm_eval runs EleutherAI's lm-evaluation-harness (pip install -e '.[lm_eval]') on the exported model;
--lm_eval_include adds a folder of local task YAMLs.
"""

import argparse
import json
import sys

import _ensure_installed  # noqa: F401  (exits with the fix when ast_ds is not installed)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model folder (e.g. the output of consolidate.py)")
    p.add_argument("--data", help="perplexity data: a .txt file, jsonl(.gz/.zst), parquet or Arrow file or folder, a "
                   "datasets save_to_disk folder, hf:NAME[@CONFIG][:SPLIT], or a data_prep output folder")
    p.add_argument("--text_field", default="text", help="the field holding each record's text")
    p.add_argument("--lm_eval", help="comma-separated lm-eval-harness tasks instead of perplexity")
    p.add_argument("--lm_eval_include", help="folder of extra task YAMLs for --lm_eval")
    p.add_argument("--limit", type=int, default=None, help="--lm_eval: examples per task (for smoke runs)")
    p.add_argument("--num_fewshot", type=int, default=None, help="--lm_eval: few-shot examples")
    p.add_argument("--seq_len", type=int, default=2048, help="window length for text files")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--out", help="write the result JSON here")
    args = p.parse_args(argv)
    if not args.data and not args.lm_eval:
        p.error("give --data (perplexity) or --lm_eval TASKS")
    try:
        if args.lm_eval:
            from ast_ds.lm_eval_harness import run_lm_eval

            result = run_lm_eval(args.model, [t for t in args.lm_eval.split(",") if t],
                                 include_path=args.lm_eval_include, batch_size=args.batch_size, device=args.device,
                                 limit=args.limit, num_fewshot=args.num_fewshot)
        else:
            from ast_ds.evaluate import perplexity

            result = perplexity(args.model, args.data, seq_len=args.seq_len, batch_size=args.batch_size,
                                device=args.device, max_windows=args.max_windows, text_field=args.text_field)
    except ValueError as e:
        sys.exit(f"error: {e}")
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        from ast_ds.atomic import write_text_atomic

        write_text_atomic(args.out, text + "\n")


if __name__ == "__main__":
    main()
