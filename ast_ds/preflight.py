"""Checks of a run's inputs before any collective: every rank runs them on its own view of the files,
and the ranks agree (``collectives.raise_if_any``), so a folder one node cannot read stops every rank
with the error instead of leaving the others waiting.

What is checked (each error names the file or field and the fix): the student and teacher folders;
the corpus (a prepared corpus, reachable when remote); that the corpus was tokenized with the model's
tokenizer and fits its vocabulary and positions; that the teacher has the student's architecture
family and vocabulary.
"""

from __future__ import annotations

import json
import os

from ast_ds import collectives
from ast_ds.config import TrainConfig

PROBES = ("The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x * 2  # 3.14159", "  mixed\tCase ÄÖÜ")


def _config(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def _has_tokenizer(folder: str) -> bool:
    return any(f.startswith("tokenizer") for f in os.listdir(folder))


def check_tokenizers_match(corpus, model_path: str) -> None:
    """The corpus's tokenizer copy and the model folder's tokenizer give the same ids (when the model
    folder has one); else the corpus was prepared with another tokenizer."""
    from ast_ds.data.tokenizer import load_tokenizer

    if not _has_tokenizer(model_path):
        return
    copy, spm = corpus.tokenizer_dir(), "tokenizer.model"
    if os.path.isfile(os.path.join(copy, spm)) and os.path.isfile(os.path.join(model_path, spm)):
        # both SentencePiece: compare like with like (HF's LlamaTokenizer may split some text differently)
        ours, theirs = load_tokenizer(os.path.join(copy, spm)), load_tokenizer(os.path.join(model_path, spm))
    else:
        ours, theirs = load_tokenizer(copy), load_tokenizer(model_path)
    same = (ours.vocab_size, ours.bos_id, ours.eos_id) == (theirs.vocab_size, theirs.bos_id, theirs.eos_id) and \
        all(ours.encode(p) == theirs.encode(p) for p in PROBES)
    if not same:
        raise ValueError(f"data.data_dir {corpus.data_dir} was prepared with another tokenizer than model.path "
                         f"{model_path} (vocabulary {ours.vocab_size} vs {theirs.vocab_size}, or different ids for the "
                         f"same text); re-run data_prep/prepare.py --tokenizer {model_path}")


def check_inputs(cfg: TrainConfig, corpus) -> None:
    """Every check of the module docstring, on this rank (raises ``ValueError``/``FileNotFoundError``)."""
    from ast_ds.model import check_model_dir

    check_model_dir(cfg.model.path)
    student = _config(cfg.model.path)
    try:
        manifest = corpus.manifest
    except (OSError, ValueError) as e:
        where = f"data.remote {corpus.remote}" if corpus.remote else f"data.data_dir {corpus.data_dir}"
        raise type(e)(f"{where}: cannot read the corpus manifest ({e})") from None
    positions = student.get("max_position_embeddings") or student.get("n_positions")
    if positions and int(manifest["seq_len"]) > int(positions):
        raise ValueError(f"data.data_dir {corpus.data_dir}: rows of {manifest['seq_len']} tokens exceed model.path's "
                         f"max_position_embeddings {positions}; prepare the data with --seq_len <= {positions}")
    if int(manifest["vocab_size"]) > int(student.get("vocab_size", 0)):
        raise ValueError(f"data {corpus.data_dir} was tokenized with a vocabulary of {manifest['vocab_size']} but the "
                         f"model has {student.get('vocab_size')} embeddings; prepare the data with the model's tokenizer")
    check_tokenizers_match(corpus, cfg.model.path)
    if cfg.mode == "ast" and cfg.distill.alpha > 0 and cfg.teacher_path != cfg.model.path:
        check_model_dir(cfg.teacher_path, what="model.teacher_path")
        teacher = _config(cfg.teacher_path)
        for key in ("model_type", "vocab_size"):
            if teacher.get(key) != student.get(key):
                raise ValueError(f"model.teacher_path {cfg.teacher_path}: {key} {teacher.get(key)!r} differs from the "
                                 f"student's {student.get(key)!r}; distil from a dense model of the student's family "
                                 f"and tokenizer (usually the model the student starts from)")


def preflight(cfg: TrainConfig, corpus) -> None:
    """Collective: :func:`check_inputs` on every rank, the first failure raised on all of them."""
    error = None
    try:
        check_inputs(cfg, corpus)
    except (OSError, ValueError) as e:
        error = e
    collectives.raise_if_any(error, what="checking the run's inputs")


def model_fingerprint(path: str) -> str:
    """What a resumed run must share with the saved one: the architecture and its sizes."""
    c = _config(path)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size")
    return ",".join(f"{k}={c.get(k)}" for k in keys)
