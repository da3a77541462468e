"""Where a prepared corpus lives: the one object that knows ``data_dir``, ``remote`` and ``cache_dir``.

A corpus is the output of ``data_prep/prepare.py`` (layout in ``ast_ds.data.manifest``): on a local
folder, or at a remote URL that mosaicml-streaming downloads from (s3://, gs://, a path, ...) with a
local cache. Everything that reads a corpus takes a :class:`Corpus`, never the three strings:

    corpus = Corpus("/data/rp_tok")                                    # local
    corpus = Corpus("/scratch/rp_cache", remote="s3://bucket/rp_tok")  # remote, cached locally
    corpus.manifest, corpus.seq_len, corpus.vocab_size, corpus.domains
    corpus.split(domain, "train")        # random access to a split's rows (a shared StreamingDataset)
    corpus.tokenizer_dir()               # the corpus's own tokenizer copy (fetched when remote)

With ``remote``, ``data_dir`` is the local cache unless ``cache_dir`` names another folder.
"""

from __future__ import annotations

import os

import numpy as np

from ast_ds.atomic import atomic_path
from ast_ds.data.manifest import LOSS_MASK_COLUMN, MANIFEST_NAME, SPLITS, TOKENS_COLUMN, read_manifest, split_dir

# the files a tokenizer copy can consist of (SentencePiece: the first three; HF: any of them)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "vocab.json", "merges.txt", "added_tokens.json")


class SplitReader:
    """Random access to the rows of one domain's split (a cached, shared ``StreamingDataset``)."""

    def __init__(self, local: str, remote: str | None):
        from streaming import StreamingDataset

        self.local, self.remote = local, remote
        self.dataset = StreamingDataset(local=local, remote=remote, shuffle=False, batch_size=1)
        self.num_rows = int(self.dataset.num_samples)
        shards = getattr(self.dataset, "shards", [])
        self.has_loss_mask = bool(shards) and LOSS_MASK_COLUMN in getattr(shards[0], "column_names", [])

    def __len__(self) -> int:
        return self.num_rows

    def rows(self, indices) -> np.ndarray:
        """[len(indices), seq_len] token ids, in the order given."""
        return np.stack([self.dataset[int(i)][TOKENS_COLUMN] for i in indices])

    def read(self, indices) -> tuple[np.ndarray, np.ndarray | None]:
        """(token ids, loss masks) of the rows, each sample read once: [len(indices), seq_len] ids and, for
        instruction data, the uint8 loss masks (1 = a response token); None for text."""
        samples = [self.dataset[int(i)] for i in indices]
        rows = np.stack([s[TOKENS_COLUMN] for s in samples])
        return rows, np.stack([s[LOSS_MASK_COLUMN] for s in samples]) if self.has_loss_mask else None


# one reader per process and folder: streaming forbids reusing a local folder for a second remote
# dataset, and each new dataset costs shared memory
_READERS: dict[tuple[str, str | None], SplitReader] = {}


def _download(url: str, path: str) -> None:
    """``url`` to ``path``, published whole."""
    from streaming.base.storage import CloudDownloader

    with atomic_path(path, fsync=False) as tmp:
        CloudDownloader.direct_download(url, tmp)


class Corpus:
    """A prepared corpus (module docstring). Cheap to build; the manifest is read on first use."""

    def __init__(self, data_dir: str, *, remote: str | None = None, cache_dir: str | None = None):
        if not data_dir:
            raise ValueError("a corpus needs data_dir (the output folder of data_prep/prepare.py, or the local "
                             "cache of a remote corpus)")
        self.data_dir = data_dir
        self.remote = remote.rstrip("/") if remote else None
        self.cache_dir = cache_dir or None
        self._manifest: dict | None = None

    def __repr__(self) -> str:
        return f"Corpus({self.data_dir!r}" + (f", remote={self.remote!r}" if self.remote else "") + ")"

    @staticmethod
    def is_prepared(path: str) -> bool:
        """Whether ``path`` is a local prepared corpus (has the manifest that preparation writes last)."""
        return os.path.isfile(os.path.join(path, MANIFEST_NAME))

    @property
    def local_root(self) -> str:
        """The local folder: the corpus itself, or the cache of a remote one."""
        return (self.cache_dir or self.data_dir) if self.remote else self.data_dir

    # ---- the manifest

    @property
    def manifest(self) -> dict:
        """The manifest: the local one, or the remote's current one fetched into the cache."""
        if self._manifest is None:
            if self.remote:
                os.makedirs(self.local_root, exist_ok=True)
                _download(f"{self.remote}/{MANIFEST_NAME}", os.path.join(self.local_root, MANIFEST_NAME))
            self._manifest = read_manifest(self.local_root)
        return self._manifest

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def domains(self) -> list[str]:
        """Every domain, in manifest order (the order of ``batch["domain"]`` indices of eval batches)."""
        return list(self.manifest["domains"])

    def rows(self, domain: str, split: str) -> int:
        """Rows of ``domain``'s ``split`` as the manifest counts them."""
        if domain not in self.manifest["domains"]:
            raise ValueError(f"domain {domain!r} is not in {self.data_dir}/{MANIFEST_NAME} "
                             f"(it has: {', '.join(self.domains)})")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {SPLITS}")
        return int(self.manifest["domains"][domain][split]["rows"])

    # ---- rows

    def split(self, domain: str, split: str) -> SplitReader:
        """The reader of ``domain``/``split``: one per process and folder."""
        if self.remote is None:
            local, remote_split = split_dir(self.data_dir, domain, split), None
        else:
            local, remote_split = split_dir(self.local_root, domain, split), f"{self.remote}/{domain}/{split}"
        key = (os.path.abspath(local), remote_split)
        if key not in _READERS:
            if remote_split is None and not os.path.isfile(os.path.join(local, "index.json")):
                raise FileNotFoundError(f"{local}/index.json: missing; the corpus in {self.data_dir} has no {split} "
                                        f"split for domain {domain!r} (prepared with --eval_fraction 0?) or is "
                                        f"incomplete")
            _READERS[key] = SplitReader(local, remote_split)
        return _READERS[key]

    # ---- the tokenizer the corpus was made with

    def tokenizer_dir(self) -> str:
        """The corpus's own copy of its tokenizer (``DIR/tokenizer``, a Hugging Face-loadable folder),
        fetched into the cache when the corpus is remote. Not the preparing machine's original path."""
        copy = self.manifest["tokenizer"].get("copy", "tokenizer")
        local = os.path.join(self.local_root, copy)
        if self.remote and not os.path.isfile(os.path.join(local, "tokenizer_config.json")):
            os.makedirs(local, exist_ok=True)
            for name in TOKENIZER_FILES:
                try:
                    _download(f"{self.remote}/{copy}/{name}", os.path.join(local, name))
                except Exception:  # noqa: BLE001 - a tokenizer has only some of these files
                    continue
        if not os.path.isfile(os.path.join(local, "tokenizer_config.json")):
            raise FileNotFoundError(f"{local}/tokenizer_config.json: missing; the corpus {self} has no tokenizer copy "
                                    f"(re-run data_prep/prepare.py --overwrite)")
        return local

    def tokenizer(self):
        """The corpus's tokenizer (``ast_ds.data.tokenizer``), loaded from its own copy."""
        from ast_ds.data.tokenizer import SENTENCEPIECE, load_tokenizer

        folder = self.tokenizer_dir()
        if self.manifest["tokenizer"].get("kind") == SENTENCEPIECE:
            return load_tokenizer(os.path.join(folder, "tokenizer.model"))  # no transformers import needed
        return load_tokenizer(folder)
