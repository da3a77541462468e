"""Perplexity of an exported Hugging Face model.

* a text or jsonl file: documents joined by blank lines into one stream, tokenized once (BOS first),
  cut into non-overlapping windows of ``seq_len`` tokens (the WikiText-2 protocol; a last partial
  window is dropped), perplexity = exp(mean next-token NLL over every predicted token);
* a prepared MDS folder (``data_prep/prepare.py`` output): the eval split of every domain, per domain
  (instruction data: the NLL of the response tokens only).
"""

from __future__ import annotations

import json
import math
import os

import torch


def read_documents(path: str, *, text_field: str = "text") -> list[str]:
    """The texts of ``path``: a plain text file (one document), or anything data prep reads (jsonl(.gz/.zst),
    parquet, Arrow, a ``datasets`` save_to_disk folder, ``hf:NAME[@CONFIG][:SPLIT]``; ``ast_ds.data.sources``),
    taking ``text_field`` of each record."""
    from ast_ds.data.sources import HUB_PREFIX, SUFFIXES, discover_domain, iter_documents

    if not path.startswith(HUB_PREFIX) and not os.path.exists(path):
        raise ValueError(f"--data {path!r} does not exist")
    docs = []
    if os.path.isfile(path) and not path.endswith(SUFFIXES):
        with open(path, encoding="utf-8") as f:
            docs = [f.read()]
    else:
        for file in discover_domain("data", path).files:
            for lineno, line in iter_documents(file):
                try:
                    docs.append(json.loads(line)[text_field])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{file}:{lineno}: not a JSON object with a {text_field!r} field") from None
    if not any(isinstance(d, str) and d.strip() for d in docs):
        raise ValueError(f"--data {path}: no text")
    return docs


def load_model(model_dir: str, device: str = "cpu"):
    """An exported folder, SLoRB branches rebuilt when present (``ast_ds.converters.load_exported``)."""
    from ast_ds.converters import load_exported
    from ast_ds.model import check_model_dir

    check_model_dir(model_dir, what="--model")
    return load_exported(model_dir, dtype=torch.float32).to(device).eval()


@torch.no_grad()
def windows_nll(model, windows: list[torch.Tensor], *, batch_size: int, device: str, desc: str,
                labels: list[torch.Tensor] | None = None) -> tuple[float, int]:
    """(summed next-token NLL, tokens counted); ``labels`` (instruction data: -100 on prompt tokens) restricts
    the count to the targets they name."""
    from ast_ds.progress import bar as tqdm

    total, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, unit="batch", leave=False):
        ids = torch.stack(windows[i:i + batch_size]).to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        if labels is None:
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                    ids[:, 1:].reshape(-1), reduction="sum")
            count += ids[:, 1:].numel()
        else:
            lab = torch.stack(labels[i:i + batch_size]).to(device)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), lab.reshape(-1),
                                                    reduction="sum", ignore_index=-100)
            count += int((lab >= 0).sum())
        total += float(nll)
    return total, count


def perplexity(model_dir: str, data: str, *, seq_len: int, batch_size: int = 8, device: str = "cpu",
               max_windows: int | None = None, text_field: str = "text") -> dict:
    model = load_model(model_dir, device)
    vocab = model.config.vocab_size
    result = {"model": os.path.abspath(model_dir), "data": os.path.abspath(data), "seq_len": seq_len}
    from ast_ds.data.corpus import Corpus

    if Corpus.is_prepared(data):
        from ast_ds.data.loader import eval_batches, labels_of

        corpus = Corpus(data)
        per = {}
        for domain in sorted(corpus.domains):
            batches = list(eval_batches(corpus, domain=domain, micro_batch=batch_size, rank=0, world_size=1))
            windows = [row for b in batches for row in b["input_ids"]]
            # instruction data (a loss mask): the response tokens only
            labels = [row for b in batches for row in labels_of(b)] if "loss_mask" in batches[0] else None
            windows = windows[:max_windows] if max_windows else windows
            labels = labels[:len(windows)] if labels is not None else None
            total, count = windows_nll(model, windows, batch_size=batch_size, device=device, desc=domain,
                                       labels=labels)
            per[domain] = {"ppl": math.exp(total / count), "tokens": count}
        result["domains"] = per
        result["ppl"] = math.exp(sum(math.log(v["ppl"]) * v["tokens"] for v in per.values()) /
                                 sum(v["tokens"] for v in per.values()))
        return result
    from ast_ds.data.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    ids = [tok.bos_id] + tok.encode("\n\n".join(read_documents(data, text_field=text_field)))
    if max(ids) >= vocab:
        raise ValueError(f"the tokenizer in {model_dir} produced id {max(ids)} >= the model's vocabulary {vocab}")
    stream = torch.tensor(ids, dtype=torch.long)
    windows = [stream[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if not windows:
        raise ValueError(f"--data {data} has {len(ids)} tokens, fewer than one window of --seq_len {seq_len}")
    windows = windows[:max_windows] if max_windows else windows
    total, count = windows_nll(model, windows, batch_size=batch_size, device=device, desc="perplexity")
    result.update(ppl=math.exp(total / count), nll=total / count, tokens=count, windows=len(windows))
    return result
