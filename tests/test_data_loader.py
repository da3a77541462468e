"""The multi-domain loader: rows read back equal the prepared rows, epochs cover every row once,
exact resume at world size 1 and 2, disjoint ranks (simulated in one process, and under torchrun),
eval shares, a remote source with a local cache, and its errors."""

import collections
import json
import os

import numpy as np
import pytest
import torch

from ast_ds.data.corpus import Corpus
from ast_ds.data.loader import MultiDomainLoader, eval_batches
from conftest import run_torchrun
from test_data_helpers import SEQ_LEN, prepared, scratch


def all_rows(data_dir: str, domain: str, split: str = "train") -> list[tuple]:
    reader = Corpus(data_dir).split(domain, split)
    return [tuple(r) for r in reader.rows(range(len(reader))).tolist()]


def rows_of(batches) -> list[tuple]:
    return [tuple(r) for b in batches for r in b["input_ids"].tolist()]


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x["input_ids"].equal(y["input_ids"]) and x["domain"].equal(y["domain"])
                                    for x, y in zip(a, b))


def test_batches_and_one_epoch_covers_every_row_once():
    out = prepared()
    loader = MultiDomainLoader(Corpus(out), domains=["code"], micro_batch=7, seed=1)
    assert (loader.domains, loader.seq_len, loader.vocab_size) == (["code"], SEQ_LEN, 320)
    assert loader.weights == {"code": 1.0}
    want = all_rows(out, "code")
    batches = [loader.next_batch() for _ in range(len(want) // 7 + 1)]
    b = batches[0]
    assert set(b) == {"input_ids", "domain"}
    assert b["input_ids"].dtype == torch.long and b["input_ids"].shape == (7, SEQ_LEN)
    assert b["domain"].dtype == torch.long and b["domain"].tolist() == [0] * 7
    got = rows_of(batches)
    assert sorted(got[:len(want)]) == sorted(want)  # the first epoch is a permutation of the rows
    assert got[:len(want)] != want  # ... shuffled
    assert got[len(want):] != got[:len(got) - len(want)]  # the next epoch has another order


def test_mixing_follows_the_weights_and_defaults_to_row_counts():
    out = prepared()
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    loader = MultiDomainLoader(Corpus(out), micro_batch=50, seed=2)
    assert loader.domains == ["wiki", "code", "books"]
    rows = {d: manifest["domains"][d]["train"]["rows"] for d in loader.domains}
    assert loader.weights == pytest.approx({d: n / sum(rows.values()) for d, n in rows.items()})
    loader.domain_weights.set_weights({"wiki": 0.0, "code": 0.25, "books": 0.75})  # the loader reads its owner
    counts = collections.Counter(torch.cat([loader.next_batch()["domain"] for _ in range(20)]).tolist())
    assert counts[0] == 0 and 0.68 < counts[2] / 1000 < 0.82
    # each row comes from the domain the batch says
    b = loader.next_batch()
    code, books = set(all_rows(out, "code")), set(all_rows(out, "books"))
    for row, d in zip(rows_of([b]), b["domain"].tolist()):
        assert row in (code if d == 1 else books)


def run(loader, n):
    return [loader.next_batch() for _ in range(n)]


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_is_exact(world_size):
    out = prepared()
    make = dict(corpus=Corpus(out), micro_batch=8, seed=4, world_size=world_size,
                weights={"wiki": 1, "code": 1, "books": 1})
    for rank in range(world_size):
        a = MultiDomainLoader(rank=rank, **make)
        run(a, 3)
        a.domain_weights.set_weights({"wiki": 2, "code": 3, "books": 2})
        run(a, 2)
        state = json.loads(json.dumps(a.state_dict()))  # JSON-serialisable, small
        weights = json.loads(json.dumps(a.domain_weights.state_dict()))
        assert len(json.dumps(state)) < 1000
        rest = run(a, 60)  # 8 · 60 rows: every domain wraps into its next epoch
        assert min(a._epoch) >= 1
        b = MultiDomainLoader(rank=rank, **make)
        b.load_state_dict(state)
        b.domain_weights.load_state_dict(weights)  # the weights' owner restores them, bit-exactly
        assert b.weights == a.weights
        assert same_batches(run(b, 60), rest)


def global_batches(world_size: int, steps: int, *, micro_batch: int, global_batch: int, state=None, **make):
    """Each step's global batch as (rows, domains), the ranks' micro-batches put in position order."""
    loaders = [MultiDomainLoader(rank=r, world_size=world_size, micro_batch=micro_batch, global_batch=global_batch,
                                 **make) for r in range(world_size)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)
    accum = global_batch // (micro_batch * world_size)
    out = []
    for _ in range(steps):
        micro = [[loader.next_batch() for loader in loaders] for _ in range(accum)]  # [k][r] = position k·W + r
        flat = [b for round_ in micro for b in round_]
        out.append((rows_of(flat), torch.cat([b["domain"] for b in flat]).tolist()))
    return out, loaders[0].state_dict()


def test_the_global_batches_do_not_depend_on_the_world_size():
    out = prepared()
    make = dict(corpus=Corpus(out), seed=9, weights={"wiki": 1, "code": 2, "books": 1})
    one, _ = global_batches(1, 10, micro_batch=12, global_batch=12, **make)
    for world, micro in ((2, 3), (3, 2), (4, 3)):
        many, _ = global_batches(world, 10, micro_batch=micro, global_batch=12, **make)
        assert many == one, world
    # every rank reads disjoint rows; a single domain is read once per epoch, nothing skipped
    rows = [r for batch, _ in one for r in batch]
    books = dict(corpus=Corpus(out), domains=["books"], seed=3)
    n = len(all_rows(out, "books"))
    per_epoch, _ = global_batches(3, n, micro_batch=1, global_batch=3, **books)
    first = [r for batch, _ in per_epoch for r in batch][:n]
    assert sorted(first) == sorted(all_rows(out, "books")) and len(rows) == 120


def test_resume_on_another_world_size_reads_what_the_uninterrupted_run_at_that_size_reads():
    out = prepared()
    make = dict(corpus=Corpus(out), seed=2, weights={"wiki": 1, "code": 1, "books": 3})
    full3, _ = global_batches(3, 9, micro_batch=2, global_batch=12, **make)
    _, state = global_batches(2, 4, micro_batch=3, global_batch=12, **make)  # 4 steps on 2 ranks, saved
    state = json.loads(json.dumps(state))
    rest3, _ = global_batches(3, 5, micro_batch=2, global_batch=12, state=state, **make)  # resumed on 3
    assert rest3 == full3[4:]
    with pytest.raises(ValueError, match="global_batch"):
        MultiDomainLoader(micro_batch=2, global_batch=10, rank=0, world_size=3, **make)


def test_eval_batches_shares():
    out = prepared()
    want = all_rows(out, "books", "eval")
    whole = list(eval_batches(Corpus(out), domain="books", micro_batch=4))
    assert rows_of(whole) == want and [len(b["input_ids"]) for b in whole][-1] == (len(want) % 4 or 4)
    assert torch.cat([b["domain"] for b in whole]).tolist() == [2] * len(want)  # manifest order index
    shares = [list(eval_batches(Corpus(out), domain="books", micro_batch=4, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1])
    assert rows_of(shares[0]) == want[0:len(want) // 2 * 2:2] and rows_of(shares[1]) == want[1:len(want) // 2 * 2:2]
    assert len(list(eval_batches(Corpus(out), domain="books", micro_batch=4, max_batches=2))) == 2


def test_remote_source_with_local_cache():
    out = prepared()
    cache = scratch("cache")
    make = dict(micro_batch=6, seed=8, weights={"wiki": 1, "code": 1, "books": 1})
    local = run(MultiDomainLoader(Corpus(out), **make), 5)
    remote = run(MultiDomainLoader(Corpus(cache, remote=out), **make), 5)
    assert same_batches(local, remote)
    assert os.path.isfile(os.path.join(cache, "manifest.json"))
    assert any(f.endswith(".mds") for f in os.listdir(os.path.join(cache, "books", "train")))
    ev = list(eval_batches(Corpus(cache, remote=out), domain="wiki", micro_batch=50))
    assert rows_of(ev) == all_rows(out, "wiki", "eval")


def test_errors():
    out = prepared()
    with pytest.raises(ValueError, match="'nope' is not in"):
        MultiDomainLoader(Corpus(out), domains=["nope"], micro_batch=2)
    loader = MultiDomainLoader(Corpus(out), domains=["wiki", "code"], micro_batch=2)
    with pytest.raises(ValueError, match=r"lack domain\(s\) \['code'\]"):
        loader.domain_weights.set_weights({"wiki": 1.0})
    with pytest.raises(ValueError, match="not all 0"):
        loader.domain_weights.set_weights({"wiki": 0.0, "code": 0.0})
    with pytest.raises(ValueError, match="unknown domain"):
        loader.domain_weights.set_weights({"wiki": 1.0, "code": 1.0, "books": 1.0})
    other = MultiDomainLoader(Corpus(out), domains=["wiki", "code"], micro_batch=2, seed=1)
    with pytest.raises(ValueError, match="seed=0"):
        other.load_state_dict(loader.state_dict())
    with pytest.raises(FileNotFoundError, match="no manifest"):
        MultiDomainLoader(Corpus(scratch("empty")), micro_batch=2)
    with pytest.raises(ValueError, match="rank=2"):
        MultiDomainLoader(Corpus(out), micro_batch=2, rank=2, world_size=2)


@pytest.mark.multiprocess
def test_two_ranks_under_torchrun():
    out = prepared()
    results = scratch("ranks")
    run_torchrun("data_loader_worker.py", 2, ["--data_dir", out, "--out", results], timeout=300)
    r0, r1 = (json.load(open(os.path.join(results, f"rank{r}.json"))) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["resume_equal"] and r1["resume_equal"]
    # the two ranks' micro-batches are the halves of one global batch: what one process reads at micro 8
    make = dict(corpus=Corpus(out), micro_batch=8, seed=5, weights={"wiki": 1, "code": 1, "books": 2})
    single = MultiDomainLoader(rank=0, world_size=1, **make)
    for step in range(len(r0["rows"])):
        if step == 5:
            single.domain_weights.set_weights({"wiki": 1, "code": 3, "books": 1})
        b = single.next_batch()
        assert b["input_ids"].tolist() == r0["rows"][step] + r1["rows"][step]
        assert b["domain"].tolist() == r0["domain"][step] + r1["domain"][step]
    first0, first1 = ({tuple(r) for b in rr["rows"][:2] for r in b} for rr in (r0, r1))
    assert len(first0) == len(first1) == 8 and not first0 & first1  # disjoint (no domain wrapped yet)
    ev0, ev1 = ([tuple(r) for b in r["eval"] for r in b] for r in (r0, r1))
    want = all_rows(out, "code", "eval")
    assert len(ev0) == len(ev1) and sorted(ev0 + ev1) == sorted(want[:len(want) // 2 * 2])
    assert r0["losses"] == r1["losses"]  # all-reduced: every rank has the same numbers
    for domain, value in r0["losses"].items():
        rows = np.array(all_rows(out, domain, "eval"), dtype=np.float64)
        assert value == pytest.approx(rows[:len(rows) // 2 * 2].mean(), rel=1e-12)
