"""Data preparation: round trip, manifest counts, train/eval disjointness, parallel = serial,
idempotence, crash safety, bad inputs, the command lines, and the tokenizer helper."""

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ast_ds.data import prepare as prepare_module
from ast_ds.data.corpus import Corpus
from ast_ds.data.packing import choose_eval_docs
from ast_ds.data.prepare import PrepareOptions, build_arg_parser, prepare
from ast_ds.data.sources import DataPrepError
from ast_ds.data.tokenizer import TokenizerError, load_tokenizer
from test_data_helpers import SEQ_LEN, corpus, make_text, prepared, scratch, tokenizer_model, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_DOCS = 6
SCRIPT_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # scripts use the installed package
REQUIRED_FLAGS = ["--input", "a=x", "--tokenizer", "t.model", "--out", "o"]


def expected_streams(domain: str, docs: list[str], sp) -> dict[str, list[int]]:
    """[BOS] ids [EOS] of the non-empty documents of each split, concatenated in input order."""
    eval_idx = set(choose_eval_docs(len(docs), EVAL_DOCS, seed=3, domain=domain).tolist())
    streams = {"train": [], "eval": []}
    for i, text in enumerate(docs):
        if text:
            streams["eval" if i in eval_idx else "train"] += [sp.bos_id, *sp.encode(text), sp.eos_id]
    return streams


def read_stream(data_dir: str, domain: str, split: str) -> np.ndarray:
    reader = Corpus(data_dir).split(domain, split)
    return reader.rows(range(len(reader))).reshape(-1)


def split_documents(stream, bos: int, eos: int) -> list[list[int]]:
    """The complete [BOS] ... [EOS] documents of a token stream, without BOS/EOS."""
    docs, start = [], None
    for i, t in enumerate(stream):
        if t == bos:
            start = i + 1
        elif t == eos and start is not None:
            docs.append(list(stream[start:i]))
            start = None
    return docs


def test_round_trip_counts_and_disjoint_splits():
    out = prepared()
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    sp = load_tokenizer(tokenizer_model())
    assert (manifest["seq_len"], manifest["vocab_size"], manifest["dtype"]) == (SEQ_LEN, 320, "uint16")
    assert (manifest["bos_id"], manifest["eos_id"]) == (1, 2)
    assert manifest["tokenizer"]["sha256"] == sp.sha256()
    assert list(manifest["domains"]) == ["wiki", "code", "books"]
    _, docs = corpus()
    for domain, texts in docs.items():
        expected = expected_streams(domain, texts, sp)
        eval_idx = set(choose_eval_docs(len(texts), EVAL_DOCS, seed=3, domain=domain).tolist())
        decoded = {}
        for split in ("train", "eval"):
            got = read_stream(out, domain, split)
            c = manifest["domains"][domain][split]
            want = expected[split]
            # the rows are the documents' stream, cut into seq_len rows; only the final tail is dropped
            assert got.tolist() == want[:len(got)]
            assert c["rows"] * SEQ_LEN == c["tokens_written"] == len(got)
            assert c["tokens_dropped"] == len(want) - len(got) < SEQ_LEN
            in_split = [i for i in range(len(texts)) if (i in eval_idx) == (split == "eval")]
            assert c["docs_read"] == len(in_split)
            assert c["docs_skipped_empty"] == sum(1 for i in in_split if not texts[i])
            assert c["docs_written"] == sum(1 for i in in_split if texts[i])
            assert c["docs_skipped_bad"] == 0
            decoded[split] = [sp.decode(d) for d in split_documents(got.tolist(), sp.bos_id, sp.eos_id)]
            # every complete document in the rows decodes to an original document of this split
            originals = [texts[i] for i in in_split if texts[i]]
            assert decoded[split] == originals[:len(decoded[split])]
        assert not set(decoded["train"]) & set(decoded["eval"])
    assert manifest["domains"]["wiki"]["train"]["docs_skipped_empty"] > 0


def test_two_workers_write_the_same_bytes():
    one, two = prepared(), prepared(workers=2)
    m1, m2 = (json.load(open(os.path.join(d, "manifest.json"))) for d in (one, two))
    assert m1["domains"] == m2["domains"] and m1["config"] == m2["config"]
    files = sorted(os.path.relpath(f, one) for f in glob.glob(f"{one}/*/*/*"))
    assert files and files == sorted(os.path.relpath(f, two) for f in glob.glob(f"{two}/*/*/*"))
    for f in files:
        assert open(os.path.join(one, f), "rb").read() == open(os.path.join(two, f), "rb").read(), f


def small_input(folder: str, n: int = 30, *, name: str = "docs.jsonl") -> str:
    import random

    rng = random.Random(n)
    vocab = ["kalo", "mine", "ruto", "sava", "zequ", "phst"]
    path = os.path.join(folder, name)
    write_jsonl(path, [json.dumps({"text": make_text(rng, vocab, rng.randint(5, 40))}) for _ in range(n)])
    return path


def leftovers(out: str) -> list[str]:
    parent = os.path.dirname(out)
    return [n for n in os.listdir(parent) if n.startswith(f".{os.path.basename(out)}.")]


def test_idempotent_refuses_different_arguments_and_overwrites():
    folder = scratch("idem")
    src = small_input(folder)
    out = os.path.join(folder, "out")
    args = dict(tokenizer=tokenizer_model(), out=out, seq_len=16, eval_docs=2, progress=False)
    first = prepare({"a": src}, **args)
    assert not first.up_to_date
    stamp = os.stat(os.path.join(out, "manifest.json")).st_mtime_ns
    again = prepare({"a": src}, **args, workers=2)  # the worker count does not change the output
    assert again.up_to_date and again.manifest == first.manifest
    assert os.stat(os.path.join(out, "manifest.json")).st_mtime_ns == stamp
    with pytest.raises(DataPrepError, match=r"different seq_len.*--overwrite"):
        prepare({"a": src}, **{**args, "seq_len": 24})
    os.utime(src, ns=(stamp, stamp + 10**9))
    with pytest.raises(DataPrepError, match="different input files"):
        prepare({"a": src}, **args)
    redone = prepare({"a": src}, **{**args, "seq_len": 24}, overwrite=True)
    assert not redone.up_to_date and redone.manifest["seq_len"] == 24
    assert json.load(open(os.path.join(out, "manifest.json")))["seq_len"] == 24
    assert leftovers(out) == []
    not_ours = os.path.join(folder, "not_ours")
    os.makedirs(not_ours)
    with pytest.raises(DataPrepError, match="not a prepared corpus"):
        prepare({"a": src}, **{**args, "out": not_ours})


@pytest.mark.parametrize("where", ["manifest", "rows"])
def test_a_crash_leaves_no_output_and_keeps_the_old_one(monkeypatch, where):
    folder = scratch("crash")
    src = small_input(folder)
    out = os.path.join(folder, "out")
    args = dict(tokenizer=tokenizer_model(), out=out, seq_len=16, eval_docs=2, progress=False)

    def boom(*a, **k):
        raise KeyboardInterrupt("simulated crash")

    target = "write_json_atomic" if where == "manifest" else "RowPacker.add"
    with monkeypatch.context() as m:
        if where == "manifest":
            m.setattr(prepare_module, "write_json_atomic", boom)
        else:
            m.setattr(prepare_module.RowPacker, "add", boom)
        with pytest.raises(KeyboardInterrupt):
            prepare({"a": src}, **args)
    assert not os.path.exists(out) and leftovers(out) == [], target
    prepare({"a": src}, **args)
    before = json.load(open(os.path.join(out, "manifest.json")))
    with monkeypatch.context() as m:
        m.setattr(prepare_module, "write_json_atomic", boom)
        with pytest.raises(KeyboardInterrupt):
            prepare({"a": src}, **{**args, "seq_len": 20}, overwrite=True)
    assert json.load(open(os.path.join(out, "manifest.json"))) == before and leftovers(out) == []


def _bad_case(case: str, folder: str) -> tuple[dict, str, str]:
    """(inputs, tokenizer, expected error pattern) for one kind of bad input."""
    good = json.dumps({"text": "kalo mine ruto sava zequ phst " * 4})
    path = os.path.join(folder, "bad.jsonl")
    tok = tokenizer_model()
    if case == "malformed_json":
        write_jsonl(path, [good, good, '{"text": "unterminated'])
        return {"d": path}, tok, rf"{path}:3: malformed JSON"
    if case == "missing_text_field":
        write_jsonl(path, [good, json.dumps({"body": "x"})])
        return {"d": path}, tok, rf"{path}:2: no 'text' field.*--text_field"
    if case == "text_not_a_string":
        write_jsonl(path, [good, json.dumps({"text": 5})])
        return {"d": path}, tok, rf"{path}:2: field 'text' is a JSON int"
    if case == "non_utf8":
        with open(path, "wb") as f:
            f.write(good.encode() + b"\n" + b'{"text": "caf\xe9"}\n')
        return {"d": path}, tok, rf"{path}:2: not valid UTF-8"
    if case == "missing_path":
        return {"d": os.path.join(folder, "nope.jsonl")}, tok, "no such file or folder"
    if case == "empty_file":
        write_jsonl(path, [])
        return {"d": path}, tok, "the domain is empty"
    if case == "blank_lines_only":
        write_jsonl(path, ["", "  "])
        return {"d": path}, tok, "the domain is empty"
    if case == "empty_folder":
        os.makedirs(os.path.join(folder, "empty"))
        open(os.path.join(folder, "empty", "README.txt"), "w").close()
        return {"d": os.path.join(folder, "empty")}, tok, "holds no .jsonl"
    if case == "truncated_gzip":
        gz = os.path.join(folder, "cut.jsonl.gz")
        write_jsonl(gz, [good] * 50)
        data = open(gz, "rb").read()
        open(gz, "wb").write(data[:len(data) // 2])
        return {"d": gz}, tok, f"{gz}: cannot read the file"
    if case == "bad_tokenizer":
        write_jsonl(path, [good] * 5)
        garbage = os.path.join(folder, "garbage.model")
        open(garbage, "wb").write(b"not a model")
        return {"d": path}, garbage, "not a loadable SentencePiece model"
    if case == "missing_tokenizer":
        write_jsonl(path, [good] * 5)
        return {"d": path}, os.path.join(folder, "none.model"), "--tokenizer .*: no such file"
    if case == "too_short_for_a_row":
        write_jsonl(path, [json.dumps({"text": "ka"})] * 3)
        return {"d": path}, tok, "less than one row of --seq_len"
    raise AssertionError(case)


BAD_CASES = ["malformed_json", "missing_text_field", "text_not_a_string", "non_utf8", "missing_path", "empty_file",
             "blank_lines_only", "empty_folder", "truncated_gzip", "bad_tokenizer", "missing_tokenizer",
             "too_short_for_a_row"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_names_the_problem_and_leaves_nothing(case):
    folder = scratch(case)
    inputs, tok, pattern = _bad_case(case, folder)
    out = os.path.join(folder, "out")
    error = TokenizerError if "tokenizer" in case else DataPrepError
    with pytest.raises(error, match=pattern):
        prepare(inputs, tokenizer=tok, out=out, seq_len=16, eval_fraction=0.0, progress=False)
    assert not os.path.exists(out) and leftovers(out) == []


def test_skip_bad_lines_counts_them():
    folder = scratch("skip")
    good = [json.dumps({"text": f"kalo mine ruto number {i} " * 3}) for i in range(8)]
    path = os.path.join(folder, "mixed.jsonl")
    with open(path, "wb") as f:
        f.write("\n".join([good[0], "{oops", good[1], json.dumps({"body": 1}), good[2], json.dumps({"text": ""}),
                           *good[3:]]).encode() + b"\n" + b'{"text": "\xff"}\n')
    out = os.path.join(folder, "out")
    r = prepare({"m": path}, tokenizer=tokenizer_model(), out=out, seq_len=16, eval_fraction=0.0,
                skip_bad_lines=True, progress=False)
    c = r.manifest["domains"]["m"]["train"]
    assert (c["docs_read"], c["docs_skipped_bad"], c["docs_skipped_empty"], c["docs_written"]) == (12, 3, 1, 8)
    assert r.manifest["domains"]["m"]["eval"]["docs_read"] == 0 and not os.path.exists(os.path.join(out, "m", "eval"))


def test_duplicate_or_malformed_input_specs():
    with pytest.raises(DataPrepError, match="expected NAME=PATH"):
        prepare(["nopath"], tokenizer=tokenizer_model(), out=scratch("x"), progress=False)
    with pytest.raises(DataPrepError, match="more than once"):
        prepare(["a=/x", "a=/y"], tokenizer=tokenizer_model(), out=scratch("x"), progress=False)
    with pytest.raises(DataPrepError, match="domain name"):
        prepare(["../a=/x"], tokenizer=tokenizer_model(), out=scratch("x"), progress=False)


def test_help_documents_every_flag():
    text = subprocess.run([sys.executable, os.path.join(ROOT, "data_prep", "prepare.py"), "--help"],
                          capture_output=True, text=True, check=True).stdout
    flags = [s for a in build_arg_parser()._actions for s in a.option_strings if s.startswith("--")]
    required = ["--input", "--text_field", "--tokenizer", "--seq_len", "--eval_fraction", "--eval_docs", "--seed",
                "--out", "--workers", "--overwrite", "--skip_bad_lines"]
    assert set(required) <= set(flags)
    assert {f"--{f.name}" for f in dataclasses.fields(PrepareOptions)} <= set(flags)
    for flag in flags:
        assert flag in text, flag


def test_a_field_added_to_prepare_options_becomes_a_flag_an_option_and_config(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class WithKnob(PrepareOptions):
        knob: int = prepare_module._option(7, group=prepare_module.OUTPUT, help="a knob added later")

    monkeypatch.setattr(prepare_module, "PrepareOptions", WithKnob)
    parser = build_arg_parser()
    assert "a knob added later" in parser.format_help()
    assert parser.parse_args(REQUIRED_FLAGS).knob == 7 and parser.parse_args(REQUIRED_FLAGS + ["--knob", "3"]).knob == 3
    opts = WithKnob.from_kwargs({"tokenizer": "t.model", "knob": 3})
    assert prepare_module._run_config([], opts, "sha")["knob"] == 3


def test_generated_flags_match_the_options():
    args = build_arg_parser().parse_args(REQUIRED_FLAGS)
    assert PrepareOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareOptions)}) == \
        PrepareOptions(tokenizer="t.model")
    args = build_arg_parser().parse_args(REQUIRED_FLAGS + ["--seq_len", "16", "--eval_docs", "3", "--skip_bad_lines"])
    assert (args.seq_len, args.eval_docs, args.skip_bad_lines, args.eval_fraction) == (16, 3, True, 0.01)
    with pytest.raises(SystemExit):  # still mutually exclusive
        build_arg_parser().parse_args(REQUIRED_FLAGS + ["--eval_fraction", "0.1", "--eval_docs", "3"])
    with pytest.raises(TypeError, match="seq_lenn"):
        prepare({"a": "x"}, tokenizer="t.model", out=scratch("x"), seq_lenn=16, progress=False)


@pytest.mark.parametrize("script", ["prepare.py", "summarize.py"])
def test_scripts_run_from_any_folder(script):
    shown = subprocess.run([sys.executable, os.path.join(ROOT, "data_prep", script), "--help"], cwd=scratch("cwd"),
                           capture_output=True, text=True, env=SCRIPT_ENV)
    assert shown.returncode == 0, shown.stderr
    assert f"usage: data_prep/{script}" in shown.stdout
    # without site-packages (-S) ast_ds cannot be imported: a clear error and how to install, status 2
    bare = subprocess.run([sys.executable, "-S", os.path.join(ROOT, "data_prep", script), "--help"],
                          cwd=scratch("cwd"), capture_output=True, text=True, env=SCRIPT_ENV)
    assert bare.returncode == 2, bare.stderr
    assert "ast_ds package is not installed" in bare.stderr and "pip install -e ." in bare.stderr
    assert "bash tests/run.sh" in bare.stderr and "Traceback" not in bare.stderr


def test_command_lines_prepare_rerun_and_summarize():
    folder = scratch("cli")
    src = small_input(folder, 40)
    out = os.path.join(folder, "out")
    cmd = [sys.executable, os.path.join(ROOT, "data_prep", "prepare.py"), "--input", f"docs={src}",
           "--tokenizer", tokenizer_model(), "--out", out, "--seq_len", "16", "--eval_docs", "3", "--no_progress"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=SCRIPT_ENV)
    assert first.returncode == 0, first.stderr
    assert f"wrote {out}" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=SCRIPT_ENV)
    assert again.returncode == 0 and "up to date" in again.stdout
    refused = subprocess.run(cmd[:-1] + ["--seq_len", "20"], capture_output=True, text=True, env=SCRIPT_ENV)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    shown = subprocess.run([sys.executable, os.path.join(ROOT, "data_prep", "summarize.py"), out, "--rows", "1"],
                           capture_output=True, text=True, env=SCRIPT_ENV)
    assert shown.returncode == 0, shown.stderr
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    rows = manifest["domains"]["docs"]["train"]["rows"]
    assert f"docs             train" in shown.stdout and str(rows) in shown.stdout
    assert "--- docs/train row 0 (16 tokens" in shown.stdout and "kalo" in shown.stdout + "mine ruto sava zequ phst"


def test_tokenizer_save_to_loads_as_llama_tokenizer_and_prepares_the_same_rows():
    from transformers import AutoTokenizer, LlamaTokenizer, LlamaTokenizerFast

    sp = load_tokenizer(tokenizer_model())
    folder = scratch("hf")
    hf_dir = os.path.join(folder, "tok")
    sp.save_to(hf_dir)
    auto = AutoTokenizer.from_pretrained(hf_dir)
    assert isinstance(auto, (LlamaTokenizer, LlamaTokenizerFast))
    assert (auto.bos_token_id, auto.eos_token_id, len(auto)) == (sp.bos_id, sp.eos_id, sp.vocab_size)
    texts = ["kalo mine ruto.", "  two  spaces über naïve\nnew line", "ß 42, zz\ttab", "x"]
    for text in texts:
        assert auto(text, add_special_tokens=False).input_ids == sp.encode(text)
        assert auto(text).input_ids == [sp.bos_id] + sp.encode(text)
    hf = load_tokenizer(hf_dir)
    assert hf.kind == "huggingface" and hf.encode(texts[1]) == sp.encode(texts[1])
    assert (hf.bos_id, hf.eos_id, hf.vocab_size) == (1, 2, 320) and hf.decode(sp.encode("kalo mine")) == "kalo mine"
    again = os.path.join(folder, "again")
    hf.save_to(again)
    assert AutoTokenizer.from_pretrained(again)("kalo").input_ids == auto("kalo").input_ids
    src = small_input(folder, 20)
    a = prepare({"d": src}, tokenizer=tokenizer_model(), out=os.path.join(folder, "a"), seq_len=16,
                eval_fraction=0, progress=False)
    b = prepare({"d": src}, tokenizer=hf_dir, out=os.path.join(folder, "b"), seq_len=16, eval_fraction=0,
                progress=False)
    assert a.manifest["domains"] == b.manifest["domains"]
    assert read_stream(a.out, "d", "train").tolist() == read_stream(b.out, "d", "train").tolist()
    assert b.manifest["tokenizer"]["kind"] == "huggingface"
    shutil.rmtree(folder)
