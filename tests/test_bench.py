"""Every benchmark that starts verl's trainer selects the cpu platform on a machine without a GPU before it does, as
``verl-modality demo`` does: the README's commands run as written on a CPU-only machine. bench_lora.py measures what
its README table reports (smoke-run on both families' tiny thinkers)."""

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
#: what starts verl's Ray trainer (and so picks verl's accelerator platform)
STARTS_VERL = {"run_main_ppo", "run_demo"}


def _calls(node: ast.AST) -> list[tuple[int, str]]:
    out = []
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            out.append((call.lineno, name))
    return sorted(out)


def _starting_scripts() -> list[Path]:
    return [
        p
        for p in sorted(BENCH.glob("bench_*.py"))
        if any(n in STARTS_VERL for _, n in _calls(ast.parse(p.read_text())))
    ]


def test_the_benchmarks_that_start_verl_are_found():
    names = {p.name for p in _starting_scripts()}
    assert {"bench_rollout.py", "bench_world_size.py", "bench_demo_compare.py", "bench_step_time.py"} <= names


@pytest.mark.parametrize("path", _starting_scripts(), ids=lambda p: p.name)
def test_main_selects_the_platform_before_verl_starts(path):
    tree = ast.parse(path.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = _calls(main)
    selected = [line for line, name in calls if name == "select_platform"]
    assert selected, f"{path.name}: main() never calls verl_modality.cli.select_platform"
    # every helper main() calls that starts verl (directly or through a module function) comes after the selection
    helpers = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and any(c in STARTS_VERL for _, c in _calls(n))
    }
    starts = [line for line, name in calls if name in STARTS_VERL | helpers]
    assert starts and min(selected) < min(starts), path.name


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lora_bench_measures_what_it_reports(family_model_dir):
    """bench_lora.py on each family's tiny thinker, one small step: the LoRA copy trains exactly the adapters of the
    language model's linear layers (rank * (in + out) each), and AdamW's state is two fp32 moments per trainable
    parameter plus a step counter per tensor."""
    import re

    import torch

    from verl_modality.models.lora import LANGUAGE_MODEL_LINEAR
    from verl_modality.models.omni import load_thinker

    bench = _bench_module("bench_lora")
    _, model_dir = family_model_dir
    res = bench.measure(model_dir, batch=1, length=16, repeats=1, warmup=1, rank=4, alpha=8)
    plain = load_thinker(model_dir)
    linear = [
        m for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(LANGUAGE_MODEL_LINEAR, n)
    ]
    assert linear and res["lora"]["trainable"] == sum(4 * (m.in_features + m.out_features) for m in linear)
    assert res["lora"]["outside_lm"] == []
    for mode in ("full", "lora"):  # exp_avg + exp_avg_sq (fp32) per parameter, a 4-byte step per tensor
        r = res[mode]
        assert r["state_bytes"] == 8 * r["with_state"] + 4 * r["state_tensors"]
    assert res["lora"]["with_state"] == res["lora"]["trainable"] and res["lora"]["state_tensors"] == 2 * len(linear)
    assert res["full"]["trainable"] == sum(p.numel() for p in plain.parameters())
    # token ids reach the language model only: the encoders get no gradient, so no AdamW state
    lm = sum(p.numel() for n, p in plain.named_parameters() if not re.match(r"(audio_tower|visual)\.", n))
    assert res["full"]["with_state"] == lm < res["full"]["trainable"]
    assert res["full"]["s"] > 0 and res["lora"]["s"] > 0


def test_lora_bench_real_model_counts():
    """The meta-device count of Qwen2.5-Omni-7B's language model (Qwen2.5-7B's shapes) gives PEFT's well-known figures
    for that model: 7,615,616,512 parameters, 20,185,088 at rank 8 on every linear layer."""
    bench = _bench_module("bench_lora")
    counts = bench.language_model_counts("Qwen2.5-Omni-7B", rank=8)
    assert counts == {"total": 7_615_616_512, "lora": 20_185_088}
    moe = bench.language_model_counts("Qwen3-Omni-30B-A3B", rank=8)
    # attention only: 48 layers x 8 x (q 2048->4096, k and v 2048->512, o 4096->2048)
    assert moe["lora"] == 48 * 8 * ((2048 + 4096) * 2 + (2048 + 512) * 2)
