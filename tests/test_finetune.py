"""Pattern-preserving LoRA (ast_ds/lora.py, launchers/finetune.py): the masked forward is the merged N:M
weight's forward; a short masked-LoRA fine-tune of a 2:4 model under ZeRO-3 on 2 CPU processes lowers the
held-out loss, resumes exactly, and consolidates to an exactly 2:4 folder whose forward equals the trained
model's, plus an adapter PEFT loads."""

import csv
import json
import os

import pytest
import torch

from ast_ds.lora import LoRALinear, add_lora, masked_merge, plain_merge_repruned
from ast_ds.sparsity import magnitude_nm_mask, verify_nm
from conftest import ROOT, run_torchrun, tiny_workspace

FINETUNE = os.path.join(ROOT, "launchers", "finetune.py")


def sparse_linear(seed=0, out=24, inp=32):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(inp, out)
    lin.weight.data = torch.where(magnitude_nm_mask(lin.weight.data), lin.weight.data, torch.zeros(()))
    return lin


def test_masked_lora_forward_is_the_merged_nm_weights_forward():
    model = torch.nn.Sequential(sparse_linear())
    add_lora(model, ["0.weight"], rank=4, alpha=8.0, masked=True)
    lin = model[0]
    assert isinstance(lin, LoRALinear) and not lin.weight.requires_grad and lin.lora_A.requires_grad
    assert torch.count_nonzero(lin.lora_B) == 0  # step 0 is the base model
    torch.nn.init.normal_(lin.lora_B)
    x = torch.randn(5, 32)
    merged = masked_merge(lin.weight, lin.lora_A, lin.lora_B, 2.0)
    assert verify_nm(merged).ok and torch.equal(merged == 0, lin.weight == 0)
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, merged, lin.bias), rtol=0, atol=1e-6)
    # gradients reach only the adapters, and never through a pruned position
    lin(x).sum().backward()
    assert lin.weight.grad is None and lin.lora_A.grad is not None and lin.lora_B.grad is not None


def test_plain_lora_forward_and_its_repruned_merge():
    model = torch.nn.Sequential(sparse_linear(1))
    add_lora(model, ["0.weight"], rank=4, alpha=4.0, masked=False)
    lin = model[0]
    torch.nn.init.normal_(lin.lora_B)
    x = torch.randn(5, 32)
    dense = lin.weight + lin.lora_B @ lin.lora_A
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, dense, lin.bias), rtol=1e-5, atol=1e-5)
    repruned = plain_merge_repruned(lin.weight, lin.lora_A, lin.lora_B, 1.0, n=2, m=4)
    assert verify_nm(repruned).ok and not torch.equal(repruned == 0, lin.weight == 0)  # the pattern moved


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from ast_ds.oneshot import prune_oneshot

    root = tiny_workspace(tmp_path_factory.mktemp("finetune"))
    prune_oneshot(str(root / "init"), str(root / "sparse"), method="magnitude")
    return root


def args(ws, out, *extra):
    return ["--ds_config", os.path.join(ROOT, "ds_configs", "zero3.json"), "--recipe", "finetune_demo",
            "--model.path", str(ws / "sparse"), "--data.data_dir", str(ws / "data"), "--out_dir", str(out),
            "--total_steps", "16", "--save_every", "8", "--log_every", "1", "--eval_every", "16",
            "--micro_batch", "4", "--global_batch", "8", "--eval_batches", "4", "--optim.lr", "1e-2",
            "--optim.warmup_steps", "2", "--lora.rank", "4", *extra]


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


@pytest.mark.multiprocess
def test_masked_lora_finetune_resumes_exactly_and_exports_exact_2_4_with_a_peft_adapter(workspace, tmp_path):
    from safetensors.torch import load_file

    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.evaluate import load_model

    full, split = tmp_path / "full", tmp_path / "split"
    run_torchrun(FINETUNE, 2, args(workspace, full))
    run_torchrun(FINETUNE, 2, args(workspace, split, "--stop_at", "8"))
    run_torchrun(FINETUNE, 2, args(workspace, split, "--resume", "auto"))
    a, b = metrics(full), metrics(split)
    assert [a[s]["loss"] for s in sorted(a)] == [b[s]["loss"] for s in sorted(a)]
    # the held-out loss (eval split, every domain) falls from the base model's
    before, after = float(a[1]["loss"]), [float(v) for k, v in a[16].items() if k.startswith("eval_loss/")]
    base_eval = _eval_loss(load_model(str(workspace / "sparse")), workspace)
    assert sum(after) / len(after) < base_eval - 0.05, (base_eval, after, before)

    out = tmp_path / "merged"
    report = consolidate(str(full), str(out), dtype="fp32")
    assert report["all_ok"] and report["num_targets"] == 14 and report["lora"]["masked"]
    # an independent check of the files: every target exactly 2:4, on the base model's own pattern
    merged, base = load_file(str(out / "model.safetensors")), load_file(str(workspace / "sparse" / "model.safetensors"))
    targets = [k for k in base if k.endswith("proj.weight")]
    assert len(targets) == 14
    for k in targets:
        assert verify_nm(merged[k]).ok and torch.equal(merged[k] == 0, base[k] == 0), k
    assert any(not torch.equal(merged[k], base[k]) for k in targets)
    # the merged model computes what the trained (base + masked adapters) model computes
    ids = torch.randint(0, 256, (2, 16))
    adapters = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    trained = load_model(str(workspace / "sparse"))
    add_lora(trained, targets, rank=4, alpha=16.0, masked=True)
    for k in targets:
        mod = trained.get_submodule(k.rsplit(".", 1)[0])
        mod.lora_A.data = adapters[f"base_model.model.{k.rsplit('.', 1)[0]}.lora_A.weight"]
        mod.lora_B.data = adapters[f"base_model.model.{k.rsplit('.', 1)[0]}.lora_B.weight"]
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(out))(input_ids=ids).logits, trained(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
    # PEFT loads the adapter onto the base model (its forward is the unmasked W + s·B·A)
    peft = pytest.importorskip("peft")
    cfg = json.load(open(out / "adapter" / "adapter_config.json"))
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 16.0 and cfg["peft_type"] == "LORA"
    peft_model = peft.PeftModel.from_pretrained(load_model(str(workspace / "sparse")), str(out / "adapter"))
    k = targets[0].rsplit(".", 1)[0]
    loaded = peft_model.base_model.model.get_submodule(k)
    assert torch.equal(loaded.lora_B["default"].weight, adapters[f"base_model.model.{k}.lora_B.weight"])


def _eval_loss(model, ws):
    from ast_ds.data.corpus import Corpus
    from ast_ds.data.loader import eval_batches

    corpus, losses = Corpus(str(ws / "data")), []
    with torch.no_grad():
        for domain in sorted(corpus.domains):
            for b in list(eval_batches(corpus, domain=domain, micro_batch=4, rank=0, world_size=1))[:8]:
                ids = b["input_ids"]
                logits = model(input_ids=ids).logits
                losses.append(float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                                      ids[:, 1:].reshape(-1))))
    return sum(losses) / len(losses)


def qa_examples(n, seed):
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append({"prompt": f"Question: what is {a} plus {b}?", "response": f" The answer is {a + b}."})
    return out


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_labels_ignore_prompt_tokens_and_the_last_position():
    from ast_ds.data.loader import labels_of

    ids = torch.tensor([[1, 5, 6, 7, 2]])
    mask = torch.tensor([[False, False, True, True, True]])
    assert labels_of({"input_ids": ids}).tolist() == [[5, 6, 7, 2, -100]]
    assert labels_of({"input_ids": ids, "loss_mask": mask}).tolist() == [[-100, 6, 7, 2, -100]]


def test_instruction_rows_carry_a_response_only_loss_mask(workspace, tmp_path):
    from ast_ds.data.corpus import Corpus
    from ast_ds.data.loader import MultiDomainLoader
    from ast_ds.data.prepare import DataPrepError, prepare
    from ast_ds.data.tokenizer import load_tokenizer

    rows = qa_examples(40, seed=0)
    write_jsonl(str(tmp_path / "qa" / "part.jsonl"), rows)
    tok_path = str(workspace / "tok.model")
    prepare({"qa": str(tmp_path / "qa")}, tokenizer=tok_path, out=str(tmp_path / "data"), seq_len=32,
            eval_fraction=0.0, prompt_field="prompt", response_field="response", progress=False)
    tok = load_tokenizer(tok_path)
    stream, mask = [], []
    for r in rows:
        p, a = tok.encode(r["prompt"]), tok.encode(r["response"])
        stream += [tok.bos_id] + p + a + [tok.eos_id]
        mask += [0] * (1 + len(p)) + [1] * (len(a) + 1)
    reader = Corpus(str(tmp_path / "data")).split("qa", "train")
    n = len(reader)
    assert n == len(stream) // 32 and reader.has_loss_mask
    assert reader.rows(range(n)).reshape(-1).tolist() == stream[:n * 32]
    assert reader.read(range(n))[1].reshape(-1).tolist() == mask[:n * 32]
    batch = MultiDomainLoader(Corpus(str(tmp_path / "data")), micro_batch=4, rank=0, world_size=1).next_batch()
    assert batch["loss_mask"].dtype == torch.bool and batch["loss_mask"].shape == batch["input_ids"].shape
    with pytest.raises(DataPrepError, match="--prompt_field and --response_field go together"):
        prepare({"qa": str(tmp_path / "qa")}, tokenizer=tok_path, out=str(tmp_path / "x"), seq_len=32,
                prompt_field="prompt", progress=False)


@pytest.mark.multiprocess
def test_zero2_lora_on_instruction_data_learns_the_responses(workspace, tmp_path):
    from ast_ds.checkpoint.consolidate import consolidate
    from ast_ds.data.prepare import prepare

    write_jsonl(str(tmp_path / "qa" / "part.jsonl"), qa_examples(400, seed=1))
    prepare({"qa": str(tmp_path / "qa")}, tokenizer=str(workspace / "tok.model"), out=str(tmp_path / "data"),
            seq_len=32, eval_fraction=0.1, prompt_field="prompt", response_field="response", progress=False)
    out = tmp_path / "run"
    run_torchrun(FINETUNE, 2, args(workspace, out, "--ds_config", os.path.join(ROOT, "ds_configs", "zero2.json"),
                                   "--data.data_dir", str(tmp_path / "data"), "--eval_every", "8",
                                   "--total_steps", "16"))
    m = metrics(out)
    first, last = float(m[8]["eval_loss/qa"]), float(m[16]["eval_loss/qa"])
    assert last < first, (first, last)  # the held-out response loss keeps falling
    report = consolidate(str(out), str(tmp_path / "merged"), dtype="fp32")
    assert report["all_ok"] and report["num_targets"] == 14
