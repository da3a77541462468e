"""One tokenizer interface over a SentencePiece ``.model`` file or a Hugging Face tokenizer folder.

``encode`` never adds BOS/EOS: data preparation adds them itself around every document.

``save_to(dir)`` writes a folder that ``transformers.AutoTokenizer.from_pretrained(dir)`` loads. For a
SentencePiece model that is ``tokenizer.model`` plus a ``tokenizer_config.json`` naming
``LlamaTokenizer`` with ``legacy=True``; its encodings equal SentencePiece's own when the model
normalises nothing (``normalization_rule_name=identity``, as LLaMA's tokenizer does). A model trained
with SentencePiece's default NFKC normaliser still loads, but Hugging Face's converted tokenizer does
not collapse whitespace the way SentencePiece does, so a few ids can differ on such text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Protocol

SENTENCEPIECE = "sentencepiece"
HUGGINGFACE = "huggingface"


class TokenizerError(ValueError):
    """A tokenizer path that cannot be loaded or lacks what data preparation needs."""


class Tokenizer(Protocol):
    kind: str
    path: str
    bos_id: int
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def save_to(self, directory: str) -> None: ...

    def sha256(self) -> str: ...


def files_sha256(paths: list[str], *, root: str | None = None) -> str:
    """sha256 over the files' names (relative to ``root``) and contents, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        name = os.path.relpath(path, root) if root else os.path.basename(path)
        digest.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


class SentencePieceTokenizer:
    kind = SENTENCEPIECE

    def __init__(self, path: str):
        import sentencepiece

        self.path = os.path.abspath(path)
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=self.path)
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"--tokenizer {path}: not a loadable SentencePiece model ({e}); pass a "
                                 f"SentencePiece .model file or a Hugging Face tokenizer folder") from e
        self.vocab_size = int(self.sp.get_piece_size())
        self.bos_id = int(self.sp.bos_id())
        self.eos_id = int(self.sp.eos_id())
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(f"--tokenizer {path}: the SentencePiece model defines no BOS or EOS piece "
                                 f"(bos_id={self.bos_id}, eos_id={self.eos_id}); train it with --bos_id/--eos_id")

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def sha256(self) -> str:
        return files_sha256([self.path])

    def save_to(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        shutil.copyfile(self.path, os.path.join(directory, "tokenizer.model"))
        piece = self.sp.id_to_piece
        unk = self.sp.unk_id()
        special = {"bos_token": piece(self.bos_id), "eos_token": piece(self.eos_id)}
        if unk >= 0:
            special["unk_token"] = piece(unk)
        config = {"tokenizer_class": "LlamaTokenizer", **special, "add_bos_token": True, "add_eos_token": False,
                  "legacy": True, "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
        _write_json(os.path.join(directory, "tokenizer_config.json"), config)
        _write_json(os.path.join(directory, "special_tokens_map.json"), special)


class HuggingFaceTokenizer:
    kind = HUGGINGFACE

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.path = os.path.abspath(path)
        try:
            self.tok = AutoTokenizer.from_pretrained(self.path)
        except Exception as e:  # transformers raises many types here; the message says which file
            raise TokenizerError(f"--tokenizer {path}: transformers.AutoTokenizer cannot load this folder "
                                 f"({type(e).__name__}: {e}); it needs tokenizer.json or tokenizer.model plus "
                                 f"tokenizer_config.json") from e
        self.vocab_size = len(self.tok)
        self.bos_id = self.tok.bos_token_id
        self.eos_id = self.tok.eos_token_id
        if self.bos_id is None or self.eos_id is None:
            raise TokenizerError(f"--tokenizer {path}: the tokenizer defines no BOS or EOS token "
                                 f"(bos_token_id={self.bos_id}, eos_token_id={self.eos_id}); set bos_token and "
                                 f"eos_token in its tokenizer_config.json")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def sha256(self) -> str:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(self.path) for f in fs)
        return files_sha256(files, root=self.path)

    def save_to(self, directory: str) -> None:
        self.tok.save_pretrained(directory)


def load_tokenizer(path: str) -> SentencePieceTokenizer | HuggingFaceTokenizer:
    """A SentencePiece ``.model`` file, or a folder that ``AutoTokenizer.from_pretrained`` loads."""
    if not os.path.exists(path):
        raise TokenizerError(f"--tokenizer {path}: no such file or folder")
    if os.path.isdir(path):
        return HuggingFaceTokenizer(path)
    return SentencePieceTokenizer(path)


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
