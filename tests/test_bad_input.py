"""Bad input to the training job gets a clear error that names the file/field and the fix."""

import json

import pytest
import torch

from ast_ds.model import check_model_dir, sparse_target_names


def test_model_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        check_model_dir(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no config.json"):
        check_model_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        check_model_dir(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="missing: model-00002-of-00002"):
        check_model_dir(str(tmp_path))


def test_targets_must_match_linears():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        sparse_target_names(model, ["q_proj"])


def test_resume_without_checkpoint(tmp_path):
    from ast_ds.checkpoint import CheckpointError, find_checkpoint

    assert find_checkpoint(str(tmp_path / "ckpts"), "auto") is None  # auto: start fresh
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        find_checkpoint(str(tmp_path / "ckpts"), str(tmp_path / "nothing"))


def test_ds_config_file_errors(tmp_path):
    from ast_ds.ds_config import load_ds_config

    with pytest.raises(ValueError, match="does not exist"):
        load_ds_config(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 4,,}')
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        load_ds_config(str(bad))
