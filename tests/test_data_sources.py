"""Hugging Face datasets as input: parquet and Arrow files, a save_to_disk folder and hf:NAME (here a local
folder that datasets.load_dataset opens offline) give exactly the rows the same documents give as jsonl,
with the text field configurable; evaluation reads the same sources."""

import json
import os

import numpy as np
import pytest

from ast_ds.data.corpus import Corpus
from ast_ds.data.prepare import prepare
from ast_ds.data.sources import DataPrepError, count_documents, iter_documents, parse_hub_spec
from test_data_helpers import SEQ_LEN, tokenizer_model

DOCS = [f"document {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(5 + i % 13)) for i in range(120)]


def rows(out, domain="d"):
    corpus = Corpus(out)
    return {s: corpus.split(domain, s).rows(range(corpus.rows(domain, s))) for s in ("train", "eval")}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("sources")
    with open(root / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"content": t, "id": i}) + "\n" for i, t in enumerate(DOCS))
    table = pa.table({"id": list(range(len(DOCS))), "content": DOCS})
    (root / "pq").mkdir()
    pq.write_table(table.slice(0, 50), root / "pq" / "part-0.parquet", row_group_size=16)
    pq.write_table(table.slice(50), root / "pq" / "part-1.parquet", row_group_size=16)
    with pa.ipc.new_file(str(root / "docs.arrow"), table.schema) as w:  # the Arrow file format
        w.write_table(table, max_chunksize=32)
    datasets.Dataset.from_dict({"id": list(range(len(DOCS))), "content": DOCS}).save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": DOCS})}).save_to_disk(str(root / "dict"))
    return root


def test_every_source_yields_the_records_in_order_as_json(sources):
    for path in (str(sources / "pq" / "part-0.parquet"), str(sources / "docs.arrow")):
        docs = [json.loads(line)["content"] for _, line in iter_documents(path)]
        assert docs == DOCS[:len(docs)] and count_documents(path) == len(docs)


@pytest.mark.parametrize("source", ["parquet folder", "arrow file", "save_to_disk", "hf: local folder"])
def test_tables_prepare_to_the_same_rows_as_jsonl(sources, tmp_path, source):
    path = {"parquet folder": sources / "pq", "arrow file": sources / "docs.arrow", "save_to_disk": sources / "saved",
            "hf: local folder": f"hf:{sources / 'pq'}:train"}[source]
    common = dict(tokenizer=tokenizer_model(), seq_len=SEQ_LEN, eval_docs=10, text_field="content", progress=False)
    prepare({"d": str(sources / "docs.jsonl")}, out=str(tmp_path / "jsonl"), **common)
    prepare({"d": str(path)}, out=str(tmp_path / "table"), **common)
    want, got = rows(str(tmp_path / "jsonl")), rows(str(tmp_path / "table"))
    for split in ("train", "eval"):
        assert len(want[split]) > 0 and np.array_equal(want[split], got[split]), split


def test_a_saved_dataset_dict_asks_for_one_split_and_a_missing_field_names_it(sources, tmp_path):
    with pytest.raises(DataPrepError, match="saved DatasetDict; point --input at one split"):
        prepare({"d": str(sources / "dict")}, out=str(tmp_path / "x"), tokenizer=tokenizer_model(), seq_len=SEQ_LEN,
                progress=False)
    with pytest.raises(DataPrepError, match="no 'text' field"):
        prepare({"d": str(sources / "saved")}, out=str(tmp_path / "y"), tokenizer=tokenizer_model(), seq_len=SEQ_LEN,
                progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_hub_specs():
    assert parse_hub_spec("hf:wikitext@wikitext-103-raw-v1:test") == ("wikitext", "wikitext-103-raw-v1", "test")
    assert parse_hub_spec("hf:allenai/c4@en:validation") == ("allenai/c4", "en", "validation")
    assert parse_hub_spec("hf:allenai/c4") == ("allenai/c4", None, "train")


def test_evaluation_reads_the_same_sources(sources):
    from ast_ds.evaluate import read_documents

    for path in (str(sources / "saved"), str(sources / "pq"), str(sources / "docs.jsonl")):
        assert read_documents(path, text_field="content") == DOCS
    with pytest.raises(ValueError, match="'text' field"):
        read_documents(str(sources / "saved"))
