"""The manifest of a prepared corpus (``DIR/manifest.json``) and the shard layout it describes.

Layout written by ``ast_ds.data.prepare``::

    DIR/manifest.json             written last: its presence means the corpus is complete
    DIR/tokenizer/                the tokenizer, as a Hugging Face folder (``Tokenizer.save_to``)
    DIR/<domain>/train/           MDS shards (index.json + shard.NNNNN.mds), one column "tokens":
    DIR/<domain>/eval/            ndarray:<dtype>:<seq_len>, one fixed-length row per sample; instruction data
                              adds "loss_mask" (ndarray:uint8:<seq_len>, 1 on response tokens and their EOS)

Reading a row back: ``StreamingDataset(local=DIR/<domain>/<split>)[i]["tokens"]`` is a numpy array
of ``seq_len`` token ids of the manifest's ``dtype`` (see ``ast_ds.data.packing`` for how documents
were packed into rows).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

MANIFEST_NAME = "manifest.json"
FORMAT = "ast_ds-mds-tokens"
VERSION = 1
SPLITS = ("train", "eval")
TOKENS_COLUMN = "tokens"
LOSS_MASK_COLUMN = "loss_mask"  # instruction data only (--prompt_field/--response_field): uint8, 1 = a response token


@dataclass
class SplitCounts:
    """Per domain and split. ``docs_read`` = ``docs_written`` + both skips;
    ``docs_written`` documents gave ``tokens_written`` + ``tokens_dropped`` tokens (BOS/EOS included),
    ``tokens_written`` = ``rows`` · seq_len, ``tokens_dropped`` < seq_len is the final tail."""

    docs_read: int = 0
    docs_skipped_empty: int = 0
    docs_skipped_bad: int = 0
    docs_written: int = 0
    tokens_written: int = 0
    tokens_dropped: int = 0
    rows: int = 0

    def add(self, other: "SplitCounts") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict:
        return asdict(self)


def split_dir(data_dir: str, domain: str, split: str) -> str:
    return os.path.join(data_dir, domain, split)


def read_manifest(data_dir: str) -> dict:
    """The manifest of a prepared corpus, checked for the format this code reads."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no manifest; {data_dir} is not a prepared corpus (or its preparation "
                                f"did not finish). Run data_prep/prepare.py --out {data_dir} first")
    with open(path) as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); re-run data_prep/prepare.py --overwrite") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
                         f"expected {FORMAT!r} version {VERSION}; re-run data_prep/prepare.py --overwrite")
    return manifest


def format_counts(manifest: dict) -> str:
    """A table of the manifest's counts per domain and split."""
    lines = [f"seq_len {manifest['seq_len']}, vocab {manifest['vocab_size']}, dtype {manifest['dtype']}",
             f"{'domain':<16} {'split':<6} {'docs read':>10} {'empty':>7} {'bad':>6} {'written':>10} "
             f"{'rows':>9} {'tokens':>13} {'dropped':>8}"]
    for name, entry in manifest["domains"].items():
        for split in SPLITS:
            c = entry[split]
            lines.append(f"{name:<16} {split:<6} {c['docs_read']:>10} {c['docs_skipped_empty']:>7} "
                         f"{c['docs_skipped_bad']:>6} {c['docs_written']:>10} {c['rows']:>9} "
                         f"{c['tokens_written']:>13} {c['tokens_dropped']:>8}")
    return "\n".join(lines)
