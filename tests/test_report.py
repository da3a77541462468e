import argparse

from ast_ds.report import ROWS, check_orderings, write_report


def test_orderings_and_table(tmp_path):
    ppl = {"dense": 3.0, "magnitude": 9.0, "wanda": 6.0, "sparsegpt": 5.0, "AST-Naive": 3.5, "AST-Boosted": 3.4,
           "fixed mask": 4.0, "static SR-STE": 3.6, "no KD": 3.3}
    results = dict(check_orderings(ppl))
    assert results["AST-Boosted <= AST-Naive (3.400 vs 3.500)"] is True
    assert results["AST-Naive < no KD (3.500 vs 3.300)"] is False
    assert all(v for k, v in results.items() if "no KD" not in k)
    rows = [{"name": n, "kind": ROWS[n][0], "ppl": v, "exact_nm": n != "dense", "pure_nm": n != "AST-Boosted"}
            for n, v in ppl.items()]
    args = argparse.Namespace(model="m", eval="e.txt", seq_len=128, steps=10, recipe="demo", data="d", nproc=2)
    text = write_report(rows, args, str(tmp_path / "r.md"))
    assert "| AST-Boosted | train | N:M + SLoRB (not pure) | 3.400 | +0.400 |" in text
    assert "**does not hold**: AST-Naive < no KD" in text
    assert (tmp_path / "r.md").read_text() == text
