"""Weak-to-Strong / Mixed-to-Strong files: SFT and RL parquet contents, verl's SFT dataset on them, the recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from verl_modality import vocabulary
from verl_modality.audio_contribution.weak_to_strong import W2SConfig, build_w2s
from verl_modality.data import schema, validate

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes" / "audio_contribution"
N = 6
WEAK_IDX = {0, 2, 3}


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """Demo rows split by hand: rows 0, 2, 3 weak, the rest strong; row 0 carries a reasoning text."""
    from verl_modality.data.synthetic import make_demo_data

    out = tmp_path_factory.mktemp("w2s_demo")
    make_demo_data(out, seed=1, n_train=N, n_test=0, progress=False)
    rows = schema.read_rows(out / "train.parquet")
    for i, row in enumerate(rows):
        row[schema.EXTRA_INFO] = {
            **row[schema.EXTRA_INFO],
            "acf_split": "weak" if i in WEAK_IDX else "strong",
            "cot": "The clip shows it." if i == 0 else None,
        }
    weak = schema.write_rows([r for i, r in enumerate(rows) if i in WEAK_IDX], out / "weak.parquet")
    strong = schema.write_rows([r for i, r in enumerate(rows) if i not in WEAK_IDX], out / "strong.parquet")
    return weak, strong, rows


def _ids(path: Path) -> list[str]:
    return pq.read_table(path).column("id").to_pylist()


def test_weak_to_strong_files(split, tmp_path):
    weak, strong, rows = split
    summary = build_w2s(weak, strong, tmp_path, W2SConfig())
    assert _ids(tmp_path / "sft.parquet") == [rows[i][schema.ID] for i in sorted(WEAK_IDX)]
    assert _ids(tmp_path / "rl.parquet") == [rows[i][schema.ID] for i in range(N) if i not in WEAK_IDX]
    assert (summary["sft"]["rows"], summary["rl"]["rows"], summary["overlap"]) == (3, 3, 0)
    assert json.loads((tmp_path / "summary.json").read_text())["paradigm"] == "weak_to_strong"

    sft = {r["id"]: r for r in pq.read_table(tmp_path / "sft.parquet").to_pylist()}
    by_id = {r[schema.ID]: r for r in rows}
    for rid, rec in sft.items():
        src = by_id[rid]
        user, assistant = rec["messages"][-2], rec["messages"][-1]
        assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
        reasoning = "<think>The clip shows it.</think>" if rid == rows[0][schema.ID] else ""
        assert assistant["content"] == f"{reasoning}<answer>{src[schema.ANSWER]}</answer>"
        assert "<answer>" in user["content"] and src[schema.QUESTION] in user["content"]
        assert user["content"].count("<audio>") == len(rec["audios"]) == len(src[schema.AUDIOS])
        assert user["content"].count("<video>") == len(rec["videos"]) == len(src[schema.VIDEOS])
        assert [a["audio"] for a in rec["audios"]] == [str(weak.parent / a["audio"]) for a in src[schema.AUDIOS]]
        assert all(Path(a["audio"]).is_file() for a in rec["audios"])
        assert rec["acf_split"] == "weak"

    # RL rows: the schema, prompts in the <answer> format, votes kept; the recipe's reward gives 2.0 + 0.5 for the
    # reply the prompt asks for, 0.5 for a well-formed wrong one, 2.0 for a right one in brackets
    from verl_modality.rewards.choice import compute_score

    assert validate.validate_file(tmp_path / "rl.parquet") == 3
    kwargs = yaml.safe_load((RECIPES / "grpo_strong_qwen2_5_omni_3b.yaml").read_text())["reward"][
        "custom_reward_function"
    ]["reward_kwargs"]
    for row in schema.read_rows(tmp_path / "rl.parquet"):
        text = row[schema.PROMPT][-1]["content"]
        assert "<answer>" in text and row[schema.EXTRA_INFO]["acf_split"] == "strong"
        answer, info = row[schema.ANSWER], row[schema.EXTRA_INFO]
        wrong = "A" if answer != "A" else "B"
        score = compute_score(row[schema.DATA_SOURCE], f"<answer>{answer}</answer>", answer, info, **kwargs)
        assert score["score"] == 2.5
        assert (
            compute_score(row[schema.DATA_SOURCE], f"<answer>{wrong}</answer>", answer, info, **kwargs)["score"] == 0.5
        )
        assert compute_score(row[schema.DATA_SOURCE], f"[{answer}]", answer, info, **kwargs)["score"] == 2.0


def test_mixed_to_strong_files(split, tmp_path):
    weak, strong, rows = split
    summary = build_w2s(weak, strong, tmp_path / "m", W2SConfig(paradigm="mixed_to_strong"))
    strong_ids = [rows[i][schema.ID] for i in range(N) if i not in WEAK_IDX]
    assert sorted(_ids(tmp_path / "m" / "sft.parquet")) == sorted(r[schema.ID] for r in rows)
    assert _ids(tmp_path / "m" / "rl.parquet") == strong_ids
    assert summary["overlap"] == 3
    # disjoint: a seeded part of the strong items goes to SFT, the rest to RL, none in both
    cfg = W2SConfig(paradigm="mixed_to_strong", disjoint=True, sft_strong_fraction=1 / 3, seed=0)
    summary = build_w2s(weak, strong, tmp_path / "d", cfg)
    sft, rl = set(_ids(tmp_path / "d" / "sft.parquet")), set(_ids(tmp_path / "d" / "rl.parquet"))
    assert (len(sft), len(rl), sft & rl, summary["overlap"]) == (4, 2, set(), 0)
    assert sft | rl == {r[schema.ID] for r in rows} and rl < set(strong_ids)


def test_sft_options_and_errors(split, tmp_path):
    weak, strong, rows = split
    build_w2s(weak, strong, tmp_path, W2SConfig(audio="drop", answer_content="text", system_prompt="Be brief."))
    table = pq.read_table(tmp_path / "sft.parquet")
    assert "audios" not in table.column_names
    by_id = {r[schema.ID]: r for r in rows}
    for rec in table.to_pylist():
        src = by_id[rec["id"]]
        text = src[schema.CHOICES][vocabulary.LETTERS.index(src[schema.ANSWER])]
        assert rec["messages"][0] == {"role": "system", "content": "Be brief."}
        assert "<audio>" not in rec["messages"][1]["content"]
        assert rec["messages"][2]["content"].endswith(f"<answer>{text}</answer>")
    with pytest.raises(ValueError, match="in both"):
        build_w2s(weak, weak, tmp_path / "x")
    with pytest.raises(ValueError, match=r"w2s.paradigm='strong_only': expected one of \('weak_to_strong'"):
        W2SConfig(paradigm="strong_only")
    with pytest.raises(ValueError, match="w2s.sft_strong_fraction=1.0: expected a finite number > 0 and < 1"):
        W2SConfig(sft_strong_fraction=1.0)


def test_cli_w2s(split, tmp_path, capsys):
    from verl_modality.cli import main

    weak, strong, _ = split
    args = ["w2s", "--weak", str(weak), "--strong", str(strong), "--out-dir", str(tmp_path)]
    assert main([*args, "--paradigm", "mixed_to_strong"]) == 0
    assert json.loads(capsys.readouterr().out)["sft"]["rows"] == N
    assert main(["w2s", "--weak", str(tmp_path / "nope.parquet"), "--strong", str(strong), "--out-dir", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_verl_sft_dataset_reads_the_sft_file(split, tmp_path, tiny_model_dir):
    """verl 0.9.1's MultiTurnSFTDataset on a text-only SFT file (audio dropped, audio-only rows): the loss covers
    exactly the assistant turn."""
    from transformers import AutoTokenizer
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    _, _, rows = split
    converted = [schema.Sample.from_row(r).with_available("A").to_row() for r in rows[:3]]
    audio_only = converted[:2]
    for r in audio_only:
        r[schema.EXTRA_INFO]["acf_split"] = "weak"
    weak = schema.write_rows(audio_only, tmp_path / "weak.parquet")
    strong = schema.write_rows(converted[2:], tmp_path / "strong.parquet")
    build_w2s(weak, strong, tmp_path / "o", W2SConfig(audio="drop"))
    assert pq.read_table(tmp_path / "o" / "sft.parquet").column_names[:1] == ["messages"]
    assert "videos" not in pq.read_table(tmp_path / "o" / "sft.parquet").column_names
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = OmegaConf.create({"messages_key": "messages", "max_length": 1024, "pad_mode": "no_padding"})
    dataset = MultiTurnSFTDataset(str(tmp_path / "o" / "sft.parquet"), tokenizer, config)
    assert len(dataset) == len(audio_only)
    item = dataset[0]
    trained = tokenizer.decode(item["input_ids"][item["loss_mask"].bool()])
    # row 0 carries a reasoning text: the whole assistant turn (and the template's end of turn) is trained on
    expected = f"<think>The clip shows it.</think><answer>{audio_only[0][schema.ANSWER]}</answer>"
    assert trained.startswith(expected) and trained[len(expected) :].strip() == "<|im_end|>"
    assert "Question:" in tokenizer.decode(item["input_ids"]) and "Question:" not in trained


def _leaf_keys(node, prefix=""):
    for key, value in node.items():
        if key in ("hydra", "defaults"):
            continue
        if isinstance(value, dict):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _compose(path: Path):
    with initialize_config_dir(config_dir=str(path.parent), version_base=None):
        return compose(config_name=path.stem)


def test_grpo_recipe_has_the_release_settings():
    cfg = _compose(RECIPES / "grpo_strong_qwen2_5_omni_3b.yaml")
    a, r = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo" and cfg.data.custom_cls.name == "OmniRLDataset"
    assert (a.optim.lr, r.n, a.use_kl_loss, a.kl_loss_coef) == (1e-6, 8, True, 0.001)  # docs/method.md §6
    assert (r.temperature, r.top_k, cfg.data.max_response_length, r.response_length) == (1.5, 4, 128, 128)
    fn = cfg.reward.custom_reward_function
    assert fn.path == "pkg://verl_modality.rewards.choice" and fn.name == "compute_score"
    from verl_modality.rewards.choice import AnswerRewardConfig

    rc = AnswerRewardConfig.from_kwargs(OmegaConf.to_container(fn.reward_kwargs))
    assert (rc.answer_weight, rc.format_weight, rc.answer_format) == (2.0, 0.5, "answer_tag")


@pytest.mark.parametrize(
    "name, base, open_keys",
    [
        (
            "grpo_strong_qwen2_5_omni_3b",
            "ppo_trainer",
            ("data.modality.", "reward.custom_reward_function.reward_kwargs."),
        ),
        ("sft_weak_to_strong", "sft_trainer_engine", ()),
    ],
)
def test_recipe_keys_exist_in_verl(name, base, open_keys):
    """Every key a recipe sets exists in verl's own config (typos would otherwise be silently added)."""
    import verl.trainer.config as verl_config

    with initialize_config_dir(config_dir=str(Path(verl_config.__file__).parent), version_base=None):
        reference = compose(config_name=base)
    path = RECIPES / f"{name}.yaml"
    unknown = []
    for key in _leaf_keys(yaml.safe_load(path.read_text())):
        if key.startswith(open_keys) or ".wrap_policy." in key:
            continue
        parent, _, last = key.rpartition(".")
        node = OmegaConf.select(reference, parent) if parent else reference
        if node is None or last not in node.keys():
            unknown.append(key)
    assert not unknown, f"{path.name} sets keys verl 0.9.1 does not have: {unknown}"
    cfg = _compose(path)  # and the recipe composes
    if name.startswith("sft"):
        assert cfg.data.messages_key == "messages" and cfg.data.truncation == "error"


def _assistant_turns(path: Path) -> dict[str, str]:
    return {r["id"]: r["messages"][-1]["content"] for r in pq.read_table(path).to_pylist()}


def test_reasoning_keep_or_drop(split, tmp_path, capsys):
    weak, strong, rows = split
    with_cot = rows[0][schema.ID]
    summary = build_w2s(weak, strong, tmp_path / "keep", W2SConfig())
    turns = _assistant_turns(tmp_path / "keep" / "sft.parquet")
    assert turns[with_cot].startswith("<think>The clip shows it.</think><answer>")
    assert (summary["reasoning"], summary["sft_with_reasoning"]) == ("keep", 1)

    summary = build_w2s(weak, strong, tmp_path / "drop", W2SConfig(reasoning="drop"))
    turns = _assistant_turns(tmp_path / "drop" / "sft.parquet")
    assert all(t.startswith("<answer>") and "<think>" not in t for t in turns.values())
    assert (summary["reasoning"], summary["sft_with_reasoning"]) == ("drop", 0)
    # another key: none of the rows has it
    assert build_w2s(weak, strong, tmp_path / "k", W2SConfig(reasoning_key="rationale"))["sft_with_reasoning"] == 0
    with pytest.raises(ValueError, match="w2s.reasoning='none': expected one of"):
        W2SConfig(reasoning="none")

    from verl_modality.cli import main

    args = ["w2s", "--weak", str(weak), "--strong", str(strong), "--out-dir", str(tmp_path / "cli")]
    assert main([*args, "--reasoning", "drop"]) == 0
    assert json.loads(capsys.readouterr().out)["sft_with_reasoning"] == 0
    assert "<think>" not in "".join(_assistant_turns(tmp_path / "cli" / "sft.parquet").values())


def test_audiomcq_chain_of_thought_reaches_the_sft_targets(tmp_path):
    """AudioMCQ records with a CoT, converted, split by their audio-contribution label, built into SFT targets."""
    import numpy as np

    from verl_modality.data.converters import convert
    from verl_modality.data.media import write_audio

    recs = []
    for i, (ac, cot) in enumerate([("weak", "A dog barks twice."), ("weak", None), ("strong", "Rain falls.")]):
        write_audio(tmp_path / "clips" / f"{i}.wav", 0.1 * np.ones(1600, dtype=np.float32))
        recs.append(
            {
                "source_dataset": "AudioCaps",
                "id": f"amcq-{i}",
                "audio_path": f"clips/{i}.wav",
                "question": "What do you hear?",
                "choices": ["a dog", "rain", "a car"],
                "answer": "a dog" if i < 2 else "rain",
                "audio_contribution": ac,
                **({"unstructured_cot": cot} if cot else {}),
            }
        )
    source = tmp_path / "audiomcq.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in recs))
    convert("audiomcq", source, tmp_path / "data" / "all.parquet", progress=False)
    rows = schema.read_rows(tmp_path / "data" / "all.parquet")
    for name in ("weak", "strong"):
        part = [r for r in rows if r[schema.EXTRA_INFO]["audio_contribution"] == name]
        schema.write_rows(part, tmp_path / "data" / f"{name}.parquet")
    weak, strong = tmp_path / "data" / "weak.parquet", tmp_path / "data" / "strong.parquet"

    build_w2s(weak, strong, tmp_path / "keep", W2SConfig(paradigm="mixed_to_strong"))
    assert _assistant_turns(tmp_path / "keep" / "sft.parquet") == {
        "amcq-0": "<think>A dog barks twice.</think><answer>A</answer>",
        "amcq-1": "<answer>A</answer>",
        "amcq-2": "<think>Rain falls.</think><answer>B</answer>",
    }
    build_w2s(weak, strong, tmp_path / "drop", W2SConfig(paradigm="mixed_to_strong", reasoning="drop"))
    assert set(_assistant_turns(tmp_path / "drop" / "sft.parquet").values()) == {
        "<answer>A</answer>",
        "<answer>B</answer>",
    }
