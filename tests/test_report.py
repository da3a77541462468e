import argparse
import math

import pytest

from ast_ds.report import (NOTES_MARKER, ROWS, SETTINGS, check_orderings, mean_std, pooled_std, run_row, summarize,
                           verdict, write_report)


def test_mean_std_and_pooled_std_closed_forms():
    assert mean_std([2.0, 4.0, 6.0]) == (4.0, 2.0)  # sample std, ddof 1
    assert mean_std([3.0]) == (3.0, 0.0)
    # equal sizes: the root of the mean variance
    assert pooled_std([1.0, 3.0], [2.0, 6.0]) == pytest.approx(math.sqrt((2.0 + 8.0) / 2))
    # a deterministic row adds no degrees of freedom and no variance: s² = (n-1)s_a² / (n-1)
    assert pooled_std([1.0, 2.0, 3.0], [5.0]) == pytest.approx(1.0)
    assert pooled_std([1.0], [5.0]) == 0.0


def test_verdict_needs_twice_the_pooled_std():
    noisy = [2.00, 2.02, 2.04]  # std 0.02
    assert verdict(noisy, [2.05, 2.07, 2.09]) == "holds"  # gap 0.05 > 2 x 0.02
    assert verdict(noisy, [2.03, 2.05, 2.07]) == "not resolved"  # gap 0.03 < 0.04
    assert verdict([2.05, 2.07, 2.09], noisy) == "reversed"
    assert verdict([2.0], [2.1]) == "holds"  # deterministic rows: any gap
    assert verdict([2.0], [2.0]) == "not resolved"


def _summaries(ppls: dict[str, list[float]]) -> list[dict]:
    rows = []
    for name, values in ppls.items():
        kind = ROWS[name][0]
        trained = kind in ("train", "retrained")
        rows.append(summarize([{"name": name, "kind": kind, "seed": i if trained else None, "ppl": v,
                                "exact_nm": None if kind in ("dense", "retrained") else True,
                                "pure_nm": name != "AST-Boosted"} for i, v in enumerate(values)]))
    return rows


def test_orderings_and_table(tmp_path):
    ppls = {"dense": [3.0], "dense retrained": [2.9, 2.95, 3.0], "magnitude": [9.0], "wanda": [6.0],
            "sparsegpt": [5.0], "AST-Naive": [3.5, 3.52, 3.54], "AST-Boosted": [3.40, 3.42, 3.44],
            "fixed mask": [3.50, 3.55, 3.60], "static SR-STE": [3.6, 3.62, 3.64], "no KD": [3.3, 3.31, 3.32]}
    verdicts = {claim.split(" (")[0]: v for claim, v in check_orderings(ppls)}
    assert verdicts["AST-Boosted < AST-Naive"] == "holds"  # gap 0.10 > 2 x 0.02
    assert verdicts["AST-Naive < fixed mask"] == "not resolved"  # gap 0.03 < 2 x 0.039
    assert verdicts["AST-Naive < no KD"] == "reversed"
    assert verdicts["AST-Naive < sparsegpt"] == "holds"
    assert "AST-Naive < naive training" not in verdicts  # a row that was not run is not judged
    args = argparse.Namespace(model="m", eval="e.txt", seq_len=128, steps=10, recipe="demo", data="d", nproc=2)
    text = write_report(_summaries(ppls), args, str(tmp_path / "r.md"))
    assert "| dense | dense | dense | 1 | 3.0000 | +0.000 | 1.017 |" in text
    assert "| dense retrained | retrained | dense | 3 | 2.9500 ± 0.0500 | -0.050 | 1.000 |" in text
    assert "| AST-Boosted | train | N:M + SLoRB (not pure) | 3 | 3.4200 ± 0.0200 | +0.420 | 1.159 |" in text
    assert "- **reversed**: AST-Naive < no KD (3.5200 ± 0.0200 vs 3.3100 ± 0.0100" in text
    assert "- **not resolved**: AST-Naive < fixed mask" in text
    assert "- holds: AST-Boosted < AST-Naive" in text
    assert (tmp_path / "r.md").read_text() == text


def test_rerun_keeps_the_notes_below_the_marker(tmp_path):
    path = tmp_path / "r.md"
    args = argparse.Namespace(model="m", eval="e.txt", seq_len=128, steps=10, recipe="demo", data="d", nproc=2)
    write_report(_summaries({"dense": [3.0], "magnitude": [9.0]}), args, str(path))
    path.write_text(path.read_text() + f"\n{NOTES_MARKER}\n## Reading this table\nhand-written\n")
    text = write_report(_summaries({"dense": [3.0], "magnitude": [8.0]}), args, str(path))
    assert "| magnitude | oneshot:magnitude | yes | 1 | 8.0000 | +5.000 | n/a |" in text
    assert "9.0000" not in text and text.count(NOTES_MARKER) == 1 and text.endswith("hand-written\n")


def test_one_run_of_a_trained_row_resolves_nothing():
    verdicts = dict(check_orderings({"AST-Naive": [2.0], "fixed mask": [2.5], "sparsegpt": [2.3], "magnitude": [2.9],
                                     "wanda": [2.6]}))
    assert all(v.startswith("not resolved (one run") for c, v in verdicts.items() if c.startswith("AST-Naive"))
    assert verdicts[next(c for c in verdicts if c.startswith("sparsegpt < magnitude"))] == "holds"  # deterministic


def test_a_finished_run_is_reused_only_under_the_same_settings(tmp_path):
    import json

    args = argparse.Namespace(**{k: f"v_{k}" for k in SETTINGS})
    args.steps = 100
    row = {"name": "AST-Naive", "kind": "train", "seed": 1, "ppl": 2.5, "exact_nm": True, "pure_nm": True,
           "settings": {k: getattr(args, k) for k in SETTINGS}}
    (tmp_path / "ast_naive_s1.json").write_text(json.dumps(row))
    assert run_row("AST-Naive", seed=1, args=args, work=str(tmp_path))["ppl"] == 2.5
    args.steps = 300
    with pytest.raises(SystemExit, match="steps: 100 then, 300 now"):
        run_row("AST-Naive", seed=1, args=args, work=str(tmp_path))
