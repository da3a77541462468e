"""Shared builders for the data tests (a tiny SentencePiece model, a generated multi-domain corpus,
prepared corpora), plus the unit tests of the pure packing functions.

Everything is generated here: no download. The corpus has three domains: ``wiki`` (a folder of two
plain .jsonl files, with blank lines and empty documents), ``code`` (one .jsonl.gz) and ``books``
(one .jsonl.zst when zstandard is installed, else .jsonl.gz).
"""

import atexit
import functools
import gzip
import json
import os
import random
import shutil
import tempfile

import numpy as np
import pytest

from ast_ds.data.packing import RowPacker, choose_eval_docs, eval_doc_count, token_dtype

_ROOT = tempfile.mkdtemp(prefix="ast_ds_data_tests_")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "ph", "st", "ar", "en", "ix", "ol", "um",
             "über", "naï", "ß"]
SEQ_LEN = 48


def scratch(name: str) -> str:
    """A fresh folder under the session's temporary root."""
    path = tempfile.mkdtemp(prefix=name + "-", dir=_ROOT)
    return path


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def make_text(rng: random.Random, vocab: list[str], n_words: int) -> str:
    text = " ".join(rng.choice(vocab) for _ in range(n_words))
    return text + rng.choice([".", "!", " 42.", ",\nand more", "  twice  spaced"])


@functools.cache
def tokenizer_model() -> str:
    """A SentencePiece BPE model (vocab 320, bos=1, eos=2, identity normalisation, byte fallback)."""
    import sentencepiece

    rng = random.Random(1)
    vocab = _words(rng, 400)
    folder = scratch("spm")
    corpus = os.path.join(folder, "corpus.txt")
    with open(corpus, "w") as f:
        for _ in range(2000):
            f.write(make_text(rng, vocab, rng.randint(3, 30)).replace("\n", " ") + "\n")
    prefix = os.path.join(folder, "tok")
    sentencepiece.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=320, model_type="bpe", bos_id=1, eos_id=2, unk_id=0,
        pad_id=-1, character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        byte_fallback=True, minloglevel=2, num_threads=1)
    return prefix + ".model"


def have_zstd() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def write_jsonl(path: str, lines: list[str]) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if path.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    elif path.endswith(".zst"):
        import zstandard

        with open(path, "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(data))
    else:
        with open(path, "wb") as f:
            f.write(data)


@functools.cache
def corpus() -> tuple[dict[str, str], dict[str, list[str]]]:
    """({domain: input path}, {domain: the documents' texts in input order, "" for empty ones})."""
    rng = random.Random(7)
    root = scratch("raw")
    inputs, docs = {}, {}
    books_ext = ".jsonl.zst" if have_zstd() else ".jsonl.gz"
    layout = {"wiki": [("wiki/part-000.jsonl", 40), ("wiki/part-001.jsonl", 35)],
              "code": [("code.jsonl.gz", 60)],
              "books": [("books" + books_ext, 30)]}
    for domain, files in layout.items():
        vocab = _words(rng, 150)
        docs[domain] = []
        for rel, n in files:
            lines = []
            for i in range(n):
                if domain == "wiki" and i % 13 == 5:
                    text = rng.choice(["", "   "])  # empty documents: skipped and counted
                else:
                    text = make_text(rng, vocab, rng.randint(1, 60 if domain != "books" else 150))
                docs[domain].append(text if text.strip() else "")
                lines.append(json.dumps({"text": text, "id": f"{domain}-{len(docs[domain])}"}))
                if domain == "wiki" and i % 17 == 3:
                    lines.append("")  # blank lines are not documents
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_jsonl(path, lines)
        inputs[domain] = os.path.join(root, "wiki") if domain == "wiki" else os.path.join(root, files[0][0])
    return inputs, docs


@functools.cache
def prepared(eval_docs: int = 6, workers: int = 1) -> str:
    """The corpus prepared with ``SEQ_LEN`` tokens per row; cached per arguments."""
    from ast_ds.data.prepare import prepare

    inputs, _ = corpus()
    out = os.path.join(scratch("prepared"), "data")
    prepare(inputs, tokenizer=tokenizer_model(), out=out, seq_len=SEQ_LEN, eval_docs=eval_docs, seed=3,
            workers=workers, progress=False)
    return out


# ---------------------------------------------------------------------------------------------------
# Pure functions


def test_token_dtype():
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(32000) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


def test_row_packer_carries_the_remainder():
    p = RowPacker(4, np.uint16)
    assert p.add(np.array([1, 2, 3])).shape == (0, 4)
    assert p.tail == 3
    rows = p.add(np.array([4, 5, 6, 7, 8, 9]))
    assert rows.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert p.tail == 1
    assert p.add(np.array([10, 11, 12])).tolist() == [[9, 10, 11, 12]]  # an exactly full row is emitted
    assert p.tail == 0 and rows.dtype == np.uint16


def test_eval_doc_count():
    assert eval_doc_count(100, eval_fraction=0.05, eval_docs=None) == 5
    assert eval_doc_count(10, eval_fraction=0.01, eval_docs=None) == 1  # at least one when > 0
    assert eval_doc_count(10, eval_fraction=0.0, eval_docs=None) == 0
    assert eval_doc_count(10, eval_fraction=0.5, eval_docs=3) == 3  # a count wins
    with pytest.raises(ValueError, match="leaving none for train"):
        eval_doc_count(3, eval_fraction=0.0, eval_docs=3)


def test_choose_eval_docs_is_deterministic_and_per_domain():
    a = choose_eval_docs(1000, 10, seed=1, domain="wiki")
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 10 and a.max() < 1000
    assert a.tolist() == choose_eval_docs(1000, 10, seed=1, domain="wiki").tolist()
    assert a.tolist() != choose_eval_docs(1000, 10, seed=2, domain="wiki").tolist()
    assert a.tolist() != choose_eval_docs(1000, 10, seed=1, domain="code").tolist()
