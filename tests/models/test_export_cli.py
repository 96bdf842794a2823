"""``verl-modality export`` on checkpoints written by hand (plain tensors, one rank): the model folder it writes, and a
base that does not match the checkpoint, and LoRA checkpoints (a PEFT model's state dict or its adapters alone) merged
into plain weights. World-size-2 checkpoints of a real run: tests/trainer/test_data_parallel.py."""

import json

import pytest
import torch

from verl_modality import cli
from verl_modality.models.omni import load_thinker


def _checkpoint(path, state):
    (path / "actor").mkdir(parents=True)
    torch.save(state, path / "actor" / "model_world_size_1_rank_0.pt")
    return path


def test_export_writes_the_checkpoints_weights_into_a_copy_of_the_base(tiny_model_dir, tmp_path, capsys):
    state = {k: v + 1.0 for k, v in load_thinker(tiny_model_dir).state_dict().items()}
    step = _checkpoint(tmp_path / "global_step_3", state)
    assert (
        cli.main(["export", "--checkpoint", str(step), "--base", str(tiny_model_dir), "--out", str(tmp_path / "m")])
        == 0
    )
    assert "(world size 1)" in capsys.readouterr().out
    exported = load_thinker(tmp_path / "m").state_dict()
    assert all(torch.equal(exported[k], state[k]) for k in state)


def test_export_with_a_base_that_does_not_match_names_it_in_one_line(tiny_model_dir, tmp_path, capsys):
    state = dict(load_thinker(tiny_model_dir).state_dict())
    state["model.extra.weight"] = torch.zeros(1)
    step = _checkpoint(tmp_path / "global_step_1", state)
    argv = ["export", "--checkpoint", str(step), "--base", str(tiny_model_dir), "--out", str(tmp_path / "m")]
    capsys.readouterr()  # the loading above printed its progress
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export: --base {tiny_model_dir} does not match the checkpoint")
    assert not (tmp_path / "m").exists()


# -- LoRA checkpoints: a PEFT model's state dict (or its adapters alone) and verl's lora_train_meta.json ------------
def _peft_thinker(model_dir, seed=0):
    """The thinker under PEFT LoRA as verl builds it with the plugin (r=4, alpha=8, the language model's linear
    layers, the encoders excluded), with non-zero ``lora_B`` (PEFT starts it at zero: the adapters would be a no-op)."""
    import peft

    from verl_modality.models.lora import LANGUAGE_MODEL_LINEAR, thinker_exclude_modules

    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LINEAR, exclude_modules=thinker_exclude_modules(None)
    )
    model = peft.get_peft_model(load_thinker(model_dir), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.05 * torch.randn(param.shape, generator=gen))
    return model.eval()


#: what verl writes beside the shards of a run with lora_rank=4, lora_alpha=8
LORA_META = {"r": 4, "lora_alpha": 8, "task_type": "CAUSAL_LM"}


def _lora_checkpoint(path, state, meta=LORA_META):
    step = _checkpoint(path, state)
    if meta is not None:
        (step / "actor" / "lora_train_meta.json").write_text(json.dumps(meta))
    return step


def _logits(model, seed=0):
    input_ids = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def _export(step, base, out):
    return cli.main(["export", "--checkpoint", str(step), "--base", str(base), "--out", str(out)])


@pytest.mark.parametrize("adapter_only", [False, True], ids=["full-peft-state", "save-lora-only"])
def test_export_of_a_lora_checkpoint_writes_the_merged_thinker(family_model_dir, adapter_only, tmp_path, capsys):
    family, model_dir = family_model_dir
    peft_model = _peft_thinker(model_dir)
    state = peft_model.state_dict()
    assert any(".lora_A.default.weight" in k for k in state) and any(".base_layer.weight" in k for k in state)
    if adapter_only:  # verl's save_lora_only filter
        state = {k: v for k, v in state.items() if "lora_" in k or ".adapter_" in k}
    step = _lora_checkpoint(tmp_path / "global_step_2", state)
    capsys.readouterr()
    assert _export(step, model_dir, tmp_path / "m") == 0
    # Qwen2.5-Omni: 7 projections per decoder layer; Qwen3-Omni (MoE layers): the 4 attention projections
    modules = {"qwen2_5_omni": 14, "qwen3_omni": 8}[family]
    assert f"LoRA adapters of {modules} modules (r=4, lora_alpha=8) merged" in capsys.readouterr().out

    exported, base = load_thinker(tmp_path / "m").eval(), load_thinker(model_dir).eval()
    expected = _logits(peft_model)
    assert not torch.allclose(_logits(base), expected, atol=1e-3)  # the adapters change the output
    torch.testing.assert_close(_logits(exported), expected, atol=1e-5, rtol=0)
    exported_state, base_state = exported.state_dict(), base.state_dict()
    assert exported_state.keys() == base_state.keys()
    adapted = {f"{m}.weight" for m in _adapted_modules(state)}
    assert len(adapted) == modules
    assert all(not torch.equal(exported_state[k], base_state[k]) for k in adapted)
    untouched = [k for k in base_state if k not in adapted]
    assert any(k.startswith("audio_tower.") for k in untouched) and any(k.startswith("visual.") for k in untouched)
    assert "model.embed_tokens.weight" in untouched
    assert all(torch.equal(exported_state[k], base_state[k]) for k in untouched)


def _adapted_modules(state):
    from verl_modality.models.lora import adapter_pairs, is_adapter_name

    return adapter_pairs({k: v for k, v in state.items() if is_adapter_name(k)})


def test_export_of_a_lora_checkpoint_without_its_meta_file_names_it_in_one_line(tiny_model_dir, tmp_path, capsys):
    step = _lora_checkpoint(tmp_path / "global_step_1", _peft_thinker(tiny_model_dir).state_dict(), meta=None)
    capsys.readouterr()
    assert _export(step, tiny_model_dir, tmp_path / "m") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export: ")
    assert str(step / "actor" / "lora_train_meta.json") in err[0] and "missing" in err[0]
    assert not (tmp_path / "m").exists()


def test_export_of_lora_adapters_onto_another_base_names_the_base(
    tiny_model_dir, tiny_qwen3_model_dir, tmp_path, capsys
):
    state = {k: v for k, v in _peft_thinker(tiny_model_dir).state_dict().items() if "lora_" in k}
    step = _lora_checkpoint(tmp_path / "global_step_1", state)
    capsys.readouterr()
    assert _export(step, tiny_qwen3_model_dir, tmp_path / "m") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the base thinker's loading progress
    assert err.startswith(f"export: --base {tiny_qwen3_model_dir} does not match the checkpoint")
    assert "LoRA adapter for 'model.layers.0.mlp.gate_proj'" in err  # Qwen3-Omni's MoE layers have no dense MLP
    assert not (tmp_path / "m").exists()
