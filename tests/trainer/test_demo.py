"""The demo's pieces that need no training: its options, RL prompts, overrides, metric curves and report."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from verl_modality import vocabulary
from verl_modality.data import schema
from verl_modality.data.synthetic import make_demo_data
from verl_modality.trainer.demo import (
    DemoConfig,
    format_report,
    levels_and_gap,
    parse_warm_start,
    plot_curves,
    reward_curves,
    rl_overrides,
    val_curves,
    write_rl_rows,
)
from verl_modality.trainer.warm_start import WarmStartConfig


def test_options_are_checked_with_their_names():
    with pytest.raises(ValueError, match="demo.steps=-1: expected an integer >= 1"):
        DemoConfig(steps=-1)
    with pytest.raises(ValueError, match=r"demo.rollout='sglang': expected one of \('vllm', 'hf'\)"):
        DemoConfig(rollout="sglang")
    with pytest.raises(ValueError, match=r"demo.val_rows \(400\) must be <= demo.n_test \(350\)"):
        DemoConfig(val_rows=400)
    assert DemoConfig(steps=4).val_every == 4 and DemoConfig().val_every == 10  # min(10, steps) unless given
    cfg = parse_warm_start(["max_steps=600", "window_low=0.3", "policies=exact", "lr=5e-4"])
    assert (cfg.max_steps, cfg.window_low, cfg.policies, cfg.lr) == (600, 0.3, ("exact",), 5e-4)
    with pytest.raises(ValueError, match="warm_start.max_steps='many': expected an integer >= 1"):
        parse_warm_start(["max_steps=many"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) warm_start.\['steps'\]: known options are .*max_steps"):
        parse_warm_start(["steps=3"])
    with pytest.raises(ValueError, match="warm_start 'max_steps': expected key=value"):
        parse_warm_start(["max_steps"])


def test_command_line_is_built_from_the_options(tmp_path, capsys):
    """Every DemoConfig field (but the nested and positional ones) is a flag with the field's default and choices;
    bad values get the option's message and exit status 2."""
    import argparse
    import dataclasses

    from verl_modality import options
    from verl_modality.cli import main

    parser = argparse.ArgumentParser()
    options.add_arguments(parser, DemoConfig, skip=("overrides", "warm_start"))
    defaults = parser.parse_args([])
    for f in dataclasses.fields(DemoConfig):
        if f.name not in ("overrides", "warm_start"):
            assert getattr(defaults, f.name) == f.default, f.name
    built = options.from_arguments(DemoConfig, parser.parse_args(["--steps", "7", "--compare", "--work-dir", "w"]))
    assert (built.steps, built.val_every, built.compare, str(built.work_dir)) == (7, 7, True, "w")
    with pytest.raises(SystemExit):
        parser.parse_args(["--rollout", "sglang"])
    assert main(["demo", "--steps", "-1", "--work-dir", str(tmp_path / "w")]) == 2
    assert "demo: --steps -1: expected an integer >= 1" in capsys.readouterr().err  # the flag as typed
    assert not (tmp_path / "w").exists()  # refused before any work


def test_rl_rows_skip_the_heldout_and_balance_the_tags(tmp_path):
    make_demo_data(tmp_path / "data", seed=2, n_train=70, n_test=0, families="balanced", progress=False)
    cfg = DemoConfig(work_dir=tmp_path, rl_per_tag=4, warm_start=WarmStartConfig(heldout_per_tag=3))
    rows = schema.read_rows(write_rl_rows(cfg, tmp_path))
    assert Counter(r["modality_tag"] for r in rows) == dict.fromkeys(vocabulary.TAGS, 4)
    train = schema.read_rows(tmp_path / "data" / "train.parquet")
    heldout = set()
    for tag in vocabulary.TAGS:
        heldout |= {r["id"] for r in train if r["modality_tag"] == tag}.intersection(
            [r["id"] for r in train if r["modality_tag"] == tag][:3]
        )
    assert not heldout & {r["id"] for r in rows}
    with pytest.raises(ValueError, match="too few training rows for 9 RL prompts per tag"):
        write_rl_rows(
            DemoConfig(work_dir=tmp_path, rl_per_tag=9, warm_start=WarmStartConfig(heldout_per_tag=3)), tmp_path
        )


def test_overrides_put_the_users_last_and_keep_their_rollout(tmp_path):
    cfg = DemoConfig(work_dir=tmp_path, steps=5, val_every=5, overrides=["cpu_rollout=hf", "data.seed=9"])
    ov = rl_overrides(cfg, tmp_path, tmp_path / "m", "mapo")
    assert "cpu_rollout=vllm" not in ov and ov[-2:] == ["cpu_rollout=hf", "data.seed=9"]
    assert (
        f"actor_rollout_ref.actor.optim.lr={cfg.rl_lr}" in ov
        and "trainer.total_training_steps=5" in ov
        and "trainer.total_epochs=5" in ov
    )
    assert rl_overrides(DemoConfig(work_dir=tmp_path), tmp_path, tmp_path / "m", "mapo")[0] == "cpu_rollout=vllm"


def _steps():
    steps = {0: {"val-core/tag/V/acc": 0.5, "val-core/tag/VA/acc": 0.25, "val-core/tag/VAS/acc": 0.0}}
    steps[0]["val-core/tag/pooled/acc"] = 0.25
    steps[1] = {"mapo/V/reward_mean": 0.4, "mapo/V/count": 8.0, "timing_s/step": 9.0, "prompt_length/mean": 100.0}
    steps[1].update({"zero_variance/samples_per_update": 48.0, "zero_variance/dropped_groups": 2.0})
    steps[2] = {"mapo/VA/reward_mean": 0.2, "mapo/VA/count": 8.0, "timing_s/step": 5.0, "prompt_length/mean": 50.0}
    # no groups dropped: samples from verl's token count, 64 samples of 50 + 10 tokens
    steps[2].update({"response_length/mean": 10.0, "perf/total_num_tokens": 64 * 60.0})
    steps[2].update({"val-core/tag/V/acc": 1.0, "val-core/tag/VA/acc": 0.5, "val-core/tag/VAS/acc": 0.5})
    steps[2]["val-core/tag/pooled/acc"] = 2 / 3
    return steps


def test_curves_levels_gap_and_report(tmp_path):
    from verl_modality.trainer import demo

    steps = _steps()
    assert val_curves(steps)["V"] == [(0, 0.5), (2, 1.0)]
    steps[1]["critic/score/mean"] = 0.4
    assert reward_curves(steps) == {"pooled": [(1, 0.4)], "V": [(1, 0.4)], "VA": [(2, 0.2)]}
    lv = levels_and_gap({"V": 1.0, "VA": 0.5, "VAS": 0.5}, {"V": 1, "VA": 1, "VAS": 1})
    assert (lv["uni"], lv["bi"], lv["tri"]) == (1.0, 0.5, 0.5)
    assert math.isclose(lv["gap"], (0.5 + 0.5 + 0.0) / 3)  # |bi-uni|/uni, |tri-uni|/uni, |tri-bi|/bi

    class Result:
        seconds = 12.0

        def steps(self):
            return steps

    s = demo.run_summary("mapo", Result(), {"V": 1, "VA": 1, "VAS": 1})
    assert s["steps"] == 2 and s["step_s_mean"] == 5.0  # the first step is left out
    assert s["prompt_tokens_per_response"] == 75.0
    assert s["samples_per_update"] == (48 + 64) / 2 and s["dropped_groups"] == 2 and s["skipped_steps"] == 0
    runs = [s, {**s, "run": "mupo", "step_s_mean": 10.0, "samples_per_update": 64.0}]
    summary = {"seed": 0, "warm_start": {"step": 350}, "runs": runs, "ratios": demo.run_ratios(runs)}
    assert summary["ratios"] == {"step_time": 2.0, "samples_per_update": 64 / 56, "prompt_tokens": 1.0}
    assert demo.run_ratios(runs[:1]) is None
    text = format_report(summary)
    assert "pooled 0.250 -> 0.667 (+41.7 points) in 2 steps" in text
    assert "56.0 samples per update" in text and "2 zero-variance groups dropped (0 steps skipped)" in text
    assert "MUPO / MAPO (full recipe): step time 2.00x, samples per update 1.14x" in text
    assert plot_curves(summary, tmp_path / "c.png").stat().st_size > 1000
