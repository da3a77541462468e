"""What ``data_prep/inspect.py`` prints: the manifest's counts and a few decoded rows per domain."""

from __future__ import annotations

import os

from ast_ds.data.manifest import format_counts, read_manifest
from ast_ds.data.tokenizer import SENTENCEPIECE, load_tokenizer


def corpus_tokenizer(data_dir: str, manifest: dict):
    """The tokenizer copy stored with the corpus (``DIR/tokenizer``)."""
    folder = os.path.join(data_dir, manifest["tokenizer"]["copy"])
    if manifest["tokenizer"]["kind"] == SENTENCEPIECE:
        return load_tokenizer(os.path.join(folder, "tokenizer.model"))  # no transformers import needed
    return load_tokenizer(folder)


def summarize(data_dir: str, *, rows: int = 2, split: str = "train", max_chars: int = 400) -> str:
    """Counts per domain and split, then the first ``rows`` rows of each domain's ``split``, decoded."""
    from ast_ds.data.loader import open_split

    manifest = read_manifest(data_dir)
    out = [f"{data_dir}", format_counts(manifest)]
    if rows <= 0:
        return "\n".join(out)
    tok = corpus_tokenizer(data_dir, manifest)
    for domain, entry in manifest["domains"].items():
        n = min(rows, entry[split]["rows"])
        if n == 0:
            continue
        reader = open_split(data_dir, domain=domain, split=split)
        for i, row in enumerate(reader.rows(range(n))):
            text = tok.decode(row)
            text = text if len(text) <= max_chars else text[:max_chars] + " …"
            out.append(f"\n--- {domain}/{split} row {i} ({len(row)} tokens, first ids {row[:8].tolist()}) ---\n{text}")
    return "\n".join(out)
