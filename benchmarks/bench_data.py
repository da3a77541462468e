"""Data preparation and loading throughput, side by side in one run.

Run (with the package installed, e.g. in the repository's .venv):
    python benchmarks/bench_data.py [--mb 24] [--seq_len 2048]

Generates a synthetic jsonl corpus (two domains, Zipf-distributed made-up words, one of them gzipped)
and trains a SentencePiece BPE model (vocab 8000) on a sample of it, then measures, on the same text:

- raw: ``SentencePieceProcessor.encode`` over every document in one process (text already in memory);
- raw ×2: the same split over 2 processes (what the machine itself scales to);
- prepare with ``--workers 1`` and ``--workers 2``: the whole of ``ast_ds.data.prepare.prepare``
  (counting pass, reading and decompressing, JSON, tokenizing, packing, MDS writing, manifest);
- the loader: ``MultiDomainLoader`` micro-batches (8 × seq_len) per second on one rank, and per rank
  with 2 ranks reading at once (two processes).

Throughput is tokens per second (tokens the tokenizer produced, BOS/EOS included for prepare). The
last line is one JSON object with the figures.
"""

import argparse
import gzip
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time

try:
    import ast_ds  # noqa: F401  (its submodules are imported where used, also in the spawned processes)
except ModuleNotFoundError:
    sys.exit("error: the ast_ds package is not installed in this Python; from the repository root run "
             "`bash tests/run.sh` and `source .venv/bin/activate`, or `pip install -e .`")


def make_corpus(root: str, megabytes: float, seed: int = 0) -> dict[str, str]:
    """Two domains of jsonl (``web`` plain in two files, ``books`` gzipped) holding about ``megabytes`` of text."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [13, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(1, 9))) for _ in range(20000)]
    zipf = [1.0 / (i + 1) for i in range(len(vocab))]
    inputs = {}
    per_domain = int(megabytes * 1e6 / 2)
    for domain, files, lengths in (("web", ["web/a.jsonl", "web/b.jsonl"], (50, 800)),
                                   ("books", ["books.jsonl.gz"], (1000, 6000))):
        for rel in files:
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            size, lines = 0, []
            while size < per_domain // len(files):
                words = rng.choices(vocab, zipf, k=rng.randint(*lengths))
                text = " ".join(words).capitalize() + "."
                size += len(text)
                lines.append(json.dumps({"text": text}))
            data = ("\n".join(lines) + "\n").encode()
            with (gzip.open(path, "wb", compresslevel=6) if rel.endswith(".gz") else open(path, "wb")) as f:
                f.write(data)
        inputs[domain] = os.path.join(root, "web") if domain == "web" else os.path.join(root, files[0])
    return inputs


def read_texts(inputs: dict[str, str]) -> list[str]:
    from ast_ds.data.sources import discover_domain, iter_documents

    texts = []
    for name, path in inputs.items():
        for f in discover_domain(name, path).files:
            texts += [json.loads(line)["text"] for _, line in iter_documents(f)]
    return texts


def train_tokenizer(texts: list[str], folder: str, vocab_size: int) -> str:
    import sentencepiece

    sample = os.path.join(folder, "sample.txt")
    with open(sample, "w") as f:
        for t in texts[:: max(1, len(texts) // 400)]:
            f.write(t[:4000] + "\n")
    prefix = os.path.join(folder, "bench")
    sentencepiece.SentencePieceTrainer.train(
        input=sample, model_prefix=prefix, vocab_size=vocab_size, model_type="bpe", bos_id=1, eos_id=2, unk_id=0,
        pad_id=-1, normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
        minloglevel=2, num_threads=2)
    return prefix + ".model"


def _encode_count(args) -> int:
    model, texts = args
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    return sum(len(sp.encode(t)) for t in texts)


def raw_encode(model: str, texts: list[str], processes: int) -> tuple[int, float]:
    """(tokens, seconds) of plain SentencePiece encoding, the texts split over ``processes``."""
    if processes == 1:
        start = time.perf_counter()
        n = _encode_count((model, texts))
        return n, time.perf_counter() - start
    parts = [(model, texts[i::processes]) for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_encode_count, [(model, ["warm up"])] * processes)  # start-up not timed
        start = time.perf_counter()
        n = sum(pool.map(_encode_count, parts))
        return n, time.perf_counter() - start


def run_prepare(inputs, *, model, out, seq_len, workers) -> tuple[int, float]:
    from ast_ds.data.prepare import prepare

    start = time.perf_counter()
    result = prepare(inputs, tokenizer=model, out=out, seq_len=seq_len, eval_fraction=0.01, workers=workers,
                     progress=False)
    seconds = time.perf_counter() - start
    tokens = sum(c[s]["tokens_written"] + c[s]["tokens_dropped"] for c in result.manifest["domains"].values()
                 for s in ("train", "eval"))
    return tokens, seconds


def _loader_rate(args) -> float:
    data_dir, rank, world, batches, micro_batch = args
    from ast_ds.data.corpus import Corpus
    from ast_ds.data.loader import MultiDomainLoader

    loader = MultiDomainLoader(Corpus(data_dir), micro_batch=micro_batch, seed=rank, rank=rank, world_size=world)
    for _ in range(3):
        loader.next_batch()
    start = time.perf_counter()
    tokens = sum(loader.next_batch()["input_ids"].numel() for _ in range(batches))
    return tokens / (time.perf_counter() - start)


def loader_rates(data_dir: str, *, world: int, batches: int, micro_batch: int) -> list[float]:
    if world == 1:
        return [_loader_rate((data_dir, 0, 1, batches, micro_batch))]
    with multiprocessing.get_context("spawn").Pool(world) as pool:
        return pool.map(_loader_rate, [(data_dir, r, world, batches, micro_batch) for r in range(world)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=24, help="megabytes of generated text")
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--loader_batches", type=int, default=200)
    ap.add_argument("--micro_batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each figure counts")
    args = ap.parse_args()
    import streaming  # noqa: F401  (imported once here, not inside the timed runs)

    root = tempfile.mkdtemp(prefix="bench_data_")
    try:
        inputs = make_corpus(os.path.join(root, "raw"), args.mb)
        texts = read_texts(inputs)
        model = train_tokenizer(texts, root, args.vocab)
        mb = sum(len(t.encode()) for t in texts) / 1e6
        print(f"corpus: {len(texts)} documents, {mb:.1f} MB of text; SentencePiece BPE vocab {args.vocab}")

        # the four measurements interleaved, best of --rounds each (the box is shared: load comes and goes)
        best = {"raw1": 0.0, "prep1": 0.0, "raw2": 0.0, "prep2": 0.0}
        for r in range(args.rounds):
            for key, measure in (("raw1", lambda: raw_encode(model, texts, 1)),
                                 ("prep1", lambda: run_prepare(inputs, model=model, out=os.path.join(root, f"w1_{r}"),
                                                               seq_len=args.seq_len, workers=1)),
                                 ("raw2", lambda: raw_encode(model, texts, 2)),
                                 ("prep2", lambda: run_prepare(inputs, model=model, out=os.path.join(root, f"w2_{r}"),
                                                               seq_len=args.seq_len, workers=2))):
                tokens, seconds = measure()
                best[key] = max(best[key], tokens / seconds)
                print(f"  round {r} {key:<5} {tokens / seconds:12,.0f} tokens/s ({tokens:,} tokens, {seconds:.2f} s)")
        raw1, raw2, prep1, prep2 = best["raw1"], best["raw2"], best["prep1"], best["prep2"]
        print(f"raw SentencePiece, 1 process : {raw1:12,.0f} tokens/s")
        print(f"raw SentencePiece, 2 process : {raw2:12,.0f} tokens/s  ({raw2 / raw1:.2f}x of 1)")
        print(f"prepare --workers 1          : {prep1:12,.0f} tokens/s  ({prep1 / raw1:.2f}x raw)")
        print(f"prepare --workers 2          : {prep2:12,.0f} tokens/s  ({prep2 / 2 / raw1:.2f}x raw per worker; "
              f"{prep2 / prep1:.2f}x of 1 worker; {prep2 / raw2:.2f}x raw with 2 processes)")

        data_dir = os.path.join(root, "w1_0")
        one = loader_rates(data_dir, world=1, batches=args.loader_batches, micro_batch=args.micro_batch)
        two = loader_rates(data_dir, world=2, batches=args.loader_batches, micro_batch=args.micro_batch)
        print(f"loader, 1 rank               : {one[0]:12,.0f} tokens/s per rank "
              f"(micro batch {args.micro_batch} x {args.seq_len})")
        print(f"loader, 2 ranks at once      : {min(two):12,.0f} tokens/s per rank (slowest rank)")
        print(json.dumps({
            "corpus_mb": round(mb, 2), "raw_tokens_per_s": round(raw1), "raw_2proc_tokens_per_s": round(raw2),
            "prepare_w1_tokens_per_s": round(prep1), "prepare_w2_tokens_per_s": round(prep2),
            "prepare_w1_vs_raw": round(prep1 / raw1, 3), "prepare_w2_per_worker_vs_raw": round(prep2 / 2 / raw1, 3),
            "prepare_scaling_w2_over_w1": round(prep2 / prep1, 3), "raw_scaling_2proc": round(raw2 / raw1, 3),
            "prepare_w2_vs_raw_2proc": round(prep2 / raw2, 3),
            "loader_tokens_per_s_per_rank_w1": round(one[0]), "loader_tokens_per_s_per_rank_w2": round(min(two))}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
