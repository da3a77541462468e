"""One rank of tests/test_data_loader.py::test_two_ranks_under_torchrun (gloo, CPU).

Draws batches from a MultiDomainLoader (rank and world size from torch.distributed), checkpoints
its state mid-way and restores it into a second loader, reads its eval share, and measures
per-domain losses with the all-reduce; writes everything to OUT/rank<r>.json.
"""

import argparse
import json
import os

import torch.distributed as dist

from ast_ds.data.corpus import Corpus
from ast_ds.data.domain_weights import measure_domain_losses
from ast_ds.data.loader import MultiDomainLoader, eval_batches


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--save_at", type=int, default=11)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    corpus = Corpus(args.data_dir)
    make = dict(corpus=corpus, micro_batch=4, seed=5, weights={"wiki": 1, "code": 1, "books": 2})
    loader = MultiDomainLoader(**make)
    batches, state = [], None
    for step in range(args.steps):
        if step == args.save_at:
            state = json.loads(json.dumps([loader.state_dict(), loader.domain_weights.state_dict()]))
        if step == 5:
            loader.domain_weights.set_weights({"wiki": 1, "code": 3, "books": 1})
        batches.append(loader.next_batch())
    resumed_loader = MultiDomainLoader(**make)
    resumed_loader.load_state_dict(state[0])
    resumed_loader.domain_weights.load_state_dict(state[1])
    resumed = [resumed_loader.next_batch() for _ in range(args.save_at, args.steps)]
    evals = [b["input_ids"].tolist() for b in eval_batches(corpus, domain="code", micro_batch=3)]
    losses = measure_domain_losses(lambda b: b["input_ids"].double().mean(dim=1), corpus,
                                   domains=loader.domains, micro_batch=3)
    result = {"rank": rank, "world": dist.get_world_size(), "domains": loader.domains,
              "rows": [b["input_ids"].tolist() for b in batches], "domain": [b["domain"].tolist() for b in batches],
              "resume_equal": all(a["input_ids"].equal(b["input_ids"]) and a["domain"].equal(b["domain"])
                                  for a, b in zip(batches[args.save_at:], resumed)),
              "eval": evals, "losses": losses}
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
