"""lm-eval-harness through launchers/evaluate.py's path, on a local task whose data is a local jsonl."""

import json

import pytest

pytest.importorskip("lm_eval")


def test_local_multiple_choice_task(tmp_path):
    from ast_ds.demo import init_model, make_corpus, train_tokenizer
    from ast_ds.lm_eval_harness import run_lm_eval

    make_corpus(str(tmp_path / "raw"), docs_per_domain=40)
    tok = train_tokenizer(str(tmp_path / "raw"), str(tmp_path / "tok"), vocab_size=200)
    init_model(str(tmp_path / "model"), tokenizer_model=tok, vocab_size=200, hidden=64, intermediate=128, layers=2,
               heads=2)
    data = tmp_path / "capitals.jsonl"
    rows = [{"country": c, "choices": [a, b], "label": 0} for c, a, b in
            [("Norvia", "Tallin", "Brell"), ("Estmark", "Brell", "Kesh"), ("Quorra", "Vantis", "Orlo"),
             ("Lumen", "Orlo", "Moln"), ("Pexia", "Dunmore", "Selm"), ("Sarvel", "Kesh", "Fane")]]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "capitals.yaml").write_text(f"""task: demo_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "The capital of {{{{country}}}} is"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
""")
    out = run_lm_eval(str(tmp_path / "model"), ["demo_capitals"], include_path=str(tasks), batch_size=2)
    acc = out["tasks"]["demo_capitals"]["acc,none"]
    assert 0.0 <= acc <= 1.0
