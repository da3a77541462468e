"""The embedded demo: a generated multi-domain corpus, a tiny LLaMA, and the final comparison.

    python -m ast_ds.demo setup  --root runs/demo     # corpus, SentencePiece tokenizer, random-init model
    python -m ast_ds.demo report --root runs/demo     # the table: perplexity of every model, results.json

``launchers/demo.sh`` runs the whole pipeline around these two steps. Nothing is downloaded: the text
is generated from small grammars with a fixed seed (stories, facts, arithmetic, code), so the demo is
reproducible and its domains differ in what a model must learn.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random

from ast_ds.atomic import atomic_path, write_json_atomic

NAMES = ["Ada", "Bram", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kira", "Lars", "Mina",
         "Noor", "Otto", "Pia", "Quin", "Rosa", "Sami", "Tess"]
PLACES = ["market", "harbor", "library", "garden", "station", "forest", "bakery", "museum", "river", "school"]
THINGS = ["lamp", "book", "basket", "kite", "map", "violin", "bicycle", "teapot", "compass", "blanket"]
ADJ = ["red", "old", "small", "shiny", "heavy", "quiet", "bright", "wooden", "broken", "new"]
VERBS = [("found", "find"), ("bought", "buy"), ("painted", "paint"), ("fixed", "fix"), ("carried", "carry"),
         ("sold", "sell"), ("hid", "hide"), ("cleaned", "clean")]


def _made_up_names(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = ["ba", "ce", "di", "fo", "gu", "ha", "ke", "li", "mo", "nu", "pa", "re", "si", "to", "vu", "za",
                 "bri", "cla", "dro", "fen", "gal", "hor", "kin", "lor", "mar", "nel", "por", "quin", "ros", "tal"]
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize())
    return sorted(names)


# 240 made-up countries with made-up capitals: pure memorisation, the knowledge pruning destroys first
COUNTRIES = dict(zip(_made_up_names(240, 1), _made_up_names(240, 2)))
DOMAINS = ("stories", "facts", "arith", "code")


def _story(rng: random.Random) -> str:
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    friend = rng.choice([n for n in NAMES if n != name])
    out = [f"{name} walked to the {place} in the morning."]
    for _ in range(rng.randint(2, 5)):
        adj, thing = rng.choice(ADJ), rng.choice(THINGS)
        past, base = rng.choice(VERBS)
        out.append(rng.choice([
            f"There {name} {past} a {adj} {thing}.",
            f"{friend} asked {name} to {base} the {adj} {thing}.",
            f"The {thing} was {adj}, so {name} {past} it with {friend}.",
            f"After that, {name} and {friend} went back to the {place}.",
        ]))
    out.append(f"In the evening {name} was happy.")
    return " ".join(out)


def _facts(rng: random.Random) -> str:
    items = rng.sample(sorted(COUNTRIES), rng.randint(4, 8))
    return " ".join(f"The capital of {c} is {COUNTRIES[c]}." for c in items)


def _arith(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(0, 60), rng.randint(0, 60)
        lines.append(rng.choice([f"{a} plus {b} equals {a + b}.", f"{a + b} minus {b} equals {a}."]))
    return " ".join(lines)


def _code(rng: random.Random) -> str:
    k, name = rng.randint(2, 9), rng.choice(["scale", "shift", "step", "grow"])
    op = rng.choice(["*", "+", "-"])
    return (f"def {name}_{k}(x):\n    y = x {op} {k}\n    return y\n\n"
            f"print({name}_{k}({rng.randint(0, 9)}))\n")


GENERATORS = {"stories": _story, "facts": _facts, "arith": _arith, "code": _code}


def make_corpus(raw_dir: str, *, docs_per_domain: int, seed: int = 0) -> dict[str, str]:
    """``raw_dir/<domain>/part-00000.jsonl.gz`` per domain and ``raw_dir/test.txt`` (held out, own seed)."""
    paths = {}
    for i, domain in enumerate(DOMAINS):
        rng = random.Random(seed * 1000 + i)
        folder = os.path.join(raw_dir, domain)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "part-00000.jsonl.gz")
        with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
            for _ in range(docs_per_domain):
                f.write(json.dumps({"text": GENERATORS[domain](rng)}) + "\n")
        paths[domain] = folder
    rng = random.Random(seed * 1000 + 999)
    test = [GENERATORS[DOMAINS[j % len(DOMAINS)]](rng) for j in range(400)]
    with open(os.path.join(raw_dir, "test.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(test))
    return paths


def train_tokenizer(raw_dir: str, model_prefix: str, *, vocab_size: int = 512) -> str:
    import sentencepiece as spm

    texts = []
    for domain in DOMAINS:
        with gzip.open(os.path.join(raw_dir, domain, "part-00000.jsonl.gz"), "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=model_prefix, vocab_size=vocab_size,
                                   model_type="bpe", character_coverage=1.0, pad_id=-1, unk_id=0, bos_id=1,
                                   eos_id=2, user_defined_symbols=["\n"], remove_extra_whitespaces=False,
                                   normalization_rule_name="identity",  # as LLaMA's: HF and SP ids agree
                                   num_threads=2, minloglevel=2)
    return model_prefix + ".model"


def init_model(out: str, *, tokenizer_model: str, vocab_size: int, seed: int = 0, hidden: int = 96,
               intermediate: int = 256, layers: int = 4, heads: int = 3) -> str:
    """A random-init tiny LLaMA folder (the dense teacher is pretrained from it). Small on purpose: with
    capacity to spare, one-shot 2:4 pruning would cost almost nothing and the demo would show nothing."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ast_ds.data.tokenizer import load_tokenizer

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    load_tokenizer(tokenizer_model).save_to(out)
    return out


def tiny_workspace(root: str) -> dict[str, str]:
    """The test-scale set-up (golden losses, resilience tests, the kill harness): a generated corpus
    (fixed seed), its tokenizer, the prepared MDS folder (seq 32) and a random-init 2-layer LLaMA."""
    from ast_ds.data.prepare import prepare

    raw = os.path.join(root, "raw")
    make_corpus(raw, docs_per_domain=150, seed=0)
    tok = train_tokenizer(raw, os.path.join(root, "tok"), vocab_size=256)
    data = os.path.join(root, "data")
    prepare({d: os.path.join(raw, d) for d in DOMAINS}, tokenizer=tok, out=data, seq_len=32, eval_fraction=0.05,
            progress=False)
    model = os.path.join(root, "init")
    init_model(model, tokenizer_model=tok, vocab_size=256, hidden=64, intermediate=128, layers=2, heads=2, seed=0)
    return {"data": data, "model": model}


# (results key, folder under the demo root, label): the demo's table, top to bottom
DEMO_ROWS = [("dense", "teacher_hf", "dense teacher"),
             ("dense_retrained", "dense_retrained_hf", "dense, retrained (same budget)"),
             ("oneshot_magnitude", "magnitude_hf", "one-shot magnitude 2:4"),
             ("oneshot_sparsegpt", "sparsegpt_hf", "one-shot SparseGPT 2:4"),
             ("ast", "ast_hf", "AST 2:4 (ZeRO-3, KD)")]


def report(root: str, *, seq_len: int) -> dict:
    """Perplexity on the held-out eval split of every domain (documents never trained on, in the
    training format), token-weighted over domains, of every model of the demo; each relative to the
    dense model retrained with the same budget (what the training tokens alone buy). The dense teacher
    must stay the best model: any other row below it would mean the teacher is under-trained and the
    comparison says nothing about sparsity, so the demo then says so and exits 1."""
    from ast_ds.evaluate import perplexity

    test = os.path.join(root, "data")
    missing = [folder for _, folder, _ in DEMO_ROWS if not os.path.isdir(os.path.join(root, folder))]
    if missing:
        raise SystemExit(f"error: {root} lacks {', '.join(missing)}; run the whole demo (bash launchers/demo.sh), "
                         f"which builds every model of the table")
    ppl = {key: perplexity(os.path.join(root, folder), test, seq_len=seq_len, batch_size=16)["ppl"]
           for key, folder, _ in DEMO_ROWS}
    ref = ppl["dense_retrained"]
    gap = ppl["oneshot_magnitude"] - ppl["dense"]
    recovered = (ppl["oneshot_magnitude"] - ppl["ast"]) / gap if gap > 0 else float("nan")
    beats_teacher = [label for key, _, label in DEMO_ROWS if key != "dense" and ppl[key] < ppl["dense"]]
    with open(os.path.join(root, "ast_hf", "sparsity_report.json")) as f:
        rep = json.load(f)
    results = {**{f"{key}_ppl": ppl[key] for key, _, _ in DEMO_ROWS},
               **{f"{key}_vs_dense_retrained": ppl[key] / ref for key, _, _ in DEMO_ROWS},
               "ast_checkpoint": os.path.abspath(os.path.join(root, "ast_hf")), "gap_recovered": recovered,
               "ast_exact_2_4": rep["all_ok"], "ast_target_sparsity": rep["target_sparsity"],
               "teacher_is_best": not beats_teacher, "eval_data": os.path.abspath(test), "seq_len": seq_len}
    write_json_atomic(os.path.join(root, "results.json"), results)
    print("\n  perplexity on the held-out eval split (all domains)")
    print(f"  {'model':34} {'perplexity':>10}  {'÷ dense retrained':>17}")
    for key, _, label in DEMO_ROWS:
        extra = f"   exact 2:4: {rep['all_ok']}" if key == "ast" else ""
        print(f"  {label:34} {ppl[key]:10.3f}  {ppl[key] / ref:17.3f}{extra}")
    print(f"\n  AST recovers {100 * recovered:.1f}% of the perplexity gap one-shot magnitude opens over the dense "
          f"teacher;\n  AST is {100 * (ppl['ast'] / ref - 1):.1f}% above the dense model retrained with the same tokens.")
    if beats_teacher:
        print(f"\n  WARNING: {', '.join(beats_teacher)} beat the dense teacher: the teacher is under-trained for this "
              f"corpus, so the table says nothing about sparsity. Train it longer (recipe demo_dense).")
    print(f"  results: {os.path.join(root, 'results.json')}")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["setup", "report"])
    p.add_argument("--root", default="runs/demo")
    p.add_argument("--docs_per_domain", type=int, default=4000)
    p.add_argument("--vocab_size", type=int, default=512)
    p.add_argument("--seq_len", type=int, default=128)
    args = p.parse_args(argv)
    if args.step == "setup":
        raw = os.path.join(args.root, "raw")
        make_corpus(raw, docs_per_domain=args.docs_per_domain)
        tok = train_tokenizer(raw, os.path.join(args.root, "tokenizer"), vocab_size=args.vocab_size)
        init_model(os.path.join(args.root, "init"), tokenizer_model=tok, vocab_size=args.vocab_size)
        print(f"corpus in {raw}, tokenizer {tok}, random-init model {os.path.join(args.root, 'init')}")
    elif not report(args.root, seq_len=args.seq_len)["teacher_is_best"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
