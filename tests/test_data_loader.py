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


def test_two_ranks_agree_on_domains_and_read_disjoint_rows():
    out = prepared()
    make = dict(corpus=Corpus(out), micro_batch=5, seed=9, world_size=2)
    r0, r1 = (MultiDomainLoader(rank=r, **make) for r in (0, 1))
    b0, b1 = run(r0, 12), run(r1, 12)
    assert all(x["domain"].equal(y["domain"]) for x, y in zip(b0, b1))
    assert not set(rows_of(b0)) & set(rows_of(b1))
    # single domain: two ranks together read every row of an epoch once (an odd leftover row is skipped)
    one = dict(corpus=Corpus(out), domains=["books"], micro_batch=1, seed=3, world_size=2)
    n = len(all_rows(out, "books"))
    both = [row for r in (0, 1) for row in rows_of(run(MultiDomainLoader(rank=r, **one), n // 2))]
    assert len(set(both)) == n // 2 * 2 and set(both) <= set(all_rows(out, "books"))


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
    assert r0["domain"] == r1["domain"]  # same domain sequence on every rank
    domain_seq = [d for b in r0["domain"] for d in b]
    rows0 = [tuple(r) for b in r0["rows"] for r in b]
    rows1 = [tuple(r) for b in r1["rows"] for r in b]
    wrapped = 0
    for d, name in enumerate(r0["domains"]):
        per_epoch = len(all_rows(out, name)) // 2  # rows per rank and epoch
        mine = [[rows[i] for i, x in enumerate(domain_seq) if x == d] for rows in (rows0, rows1)]
        for start in range(0, len(mine[0]), per_epoch):
            e0, e1 = (set(m[start:start + per_epoch]) for m in mine)
            # within an epoch of a domain, the ranks read distinct, disjoint rows
            assert not e0 & e1 and len(e0) == len(e1) == len(mine[0][start:start + per_epoch])
            wrapped += start > 0
    assert wrapped  # the run crossed at least one epoch boundary
    ev0, ev1 = ([tuple(r) for b in r["eval"] for r in b] for r in (r0, r1))
    want = all_rows(out, "code", "eval")
    assert len(ev0) == len(ev1) and sorted(ev0 + ev1) == sorted(want[:len(want) // 2 * 2])
    assert r0["losses"] == r1["losses"]  # all-reduced: every rank has the same numbers
    for domain, value in r0["losses"].items():
        rows = np.array(all_rows(out, domain, "eval"), dtype=np.float64)
        assert value == pytest.approx(rows[:len(rows) // 2 * 2].mean(), rel=1e-12)
