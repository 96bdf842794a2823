import asyncio
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto

from verl_modality.rewards import choice
from verl_modality.rewards.reward_manager import NAME, ModalityRewardManager, valid_response_length

PROMPT_LEN, RESPONSE_LEN = 6, 24
OPTIONS = ["red video", "blue video", "green video", "The clip gives no way to tell."]
REPLIES = ["<think>blue</think><answer>B</answer>", "I pick [C].", "<answer>none of the above</answer>"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def make_batch(tokenizer, replies, infos, data_source="maple-qa+"):
    """One DataProto like the agent loop hands the reward loop: left-padded prompts, right-padded responses."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts, responses, masks, lengths = [], [], [], []
    for reply in replies:
        ids = tokenizer.encode(reply, add_special_tokens=False)
        assert 0 < len(ids) <= RESPONSE_LEN
        prompt = tokenizer.encode("Which video?", add_special_tokens=False)[:PROMPT_LEN]
        prompts.append([pad] * (PROMPT_LEN - len(prompt)) + prompt)
        responses.append(ids + [pad] * (RESPONSE_LEN - len(ids)))
        masks.append(
            [0] * (PROMPT_LEN - len(prompt)) + [1] * len(prompt) + [1] * len(ids) + [0] * (RESPONSE_LEN - len(ids))
        )
        lengths.append(len(ids))
    prompts_t, responses_t = torch.tensor(prompts), torch.tensor(responses)
    batch = {
        "prompts": prompts_t,
        "responses": responses_t,
        "input_ids": torch.cat([prompts_t, responses_t], dim=1),
        "attention_mask": torch.tensor(masks),
    }
    non_tensor = {
        "data_source": np.array([data_source] * len(replies), dtype=object),
        "reward_model": np.array([{"style": "rule", "ground_truth": "B"}] * len(replies), dtype=object),
        "extra_info": np.array(infos, dtype=object),
    }
    return DataProto.from_dict(tensors=batch, non_tensors=non_tensor), lengths


def seen_tokens_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """choice.compute_score plus the response length the manager handed over (-1 when none)."""
    out = choice.compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    return {**out, "seen_tokens": float(extra_info.get("response_tokens", -1))}


def run(manager_cls, compute_score, data, tokenizer):
    async def main():  # the managers bind the running event loop when built
        manager = manager_cls(config=OmegaConf.create({}), tokenizer=tokenizer, compute_score=compute_score)
        return [await manager.run_single(data[i : i + 1]) for i in range(len(data))]

    return asyncio.run(main())


def test_matches_naive_plus_response_tokens(tokenizer):
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

    shared = {"id": "q1", "choices": OPTIONS, "none_index": 3, "sample_task": "qa"}  # one dict, as after repeat
    data, lengths = make_batch(tokenizer, REPLIES, [shared] * len(REPLIES))
    assert [valid_response_length(data[i : i + 1]) for i in range(len(data))] == lengths

    ours = run(ModalityRewardManager, seen_tokens_score, data, tokenizer)
    assert shared == {"id": "q1", "choices": OPTIONS, "none_index": 3, "sample_task": "qa"}  # not mutated
    naive = run(NaiveRewardManager, seen_tokens_score, data, tokenizer)
    for mine, theirs, n in zip(ours, naive, lengths, strict=True):
        assert mine["reward_extra_info"].pop("response_tokens") == n
        assert mine["reward_extra_info"].pop("seen_tokens") == n  # compute_score saw it in extra_info
        assert theirs["reward_extra_info"].pop("seen_tokens") == -1
        assert mine == theirs
    assert [o["reward_score"] for o in ours] == [1.0, 0.0, 0.0]  # B; C; none-answer (option D) vs answer B
    assert [o["reward_extra_info"]["parsed"] for o in ours] == ["B", "C", "D"]


def test_load_reward_manager_by_name(tokenizer):
    from verl.trainer.ppo.reward import load_reward_manager, resolve_reward_manager_cls

    cfg = OmegaConf.create(
        {
            "reward": {
                "reward_manager": {"source": "register", "name": NAME},
                "custom_reward_function": {
                    "path": "pkg://verl_modality.rewards.choice",
                    "name": "compute_score",
                    "reward_kwargs": {"answer_weight": 2.0, "format_weight": 0.5, "answer_format": "answer_tag"},
                },
            }
        }
    )
    assert resolve_reward_manager_cls(cfg) is ModalityRewardManager
    data, lengths = make_batch(tokenizer, REPLIES, [{"id": f"q{i}", "choices": OPTIONS} for i in range(3)])

    async def main():
        manager = load_reward_manager(cfg, tokenizer)
        assert isinstance(manager, ModalityRewardManager)
        return [await manager.run_single(data[i : i + 1]) for i in range(len(data))]

    out = asyncio.run(main())
    # 2.0 * exact match + 0.5 * format (audio-contribution recipe): tagged B right; [C] wrong, untagged; none wrong
    assert [o["reward_score"] for o in out] == [2.5, 0.0, 0.5]
    assert [o["reward_extra_info"]["response_tokens"] for o in out] == lengths


def _bad_score(value, **extra):
    def fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        return {"score": value, "acc": 0.0, **extra}

    return fn


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_score_raises(tokenizer, value):
    data, _ = make_batch(tokenizer, REPLIES[:1], [{"id": "clip-7/VA"}], data_source="maple-bench")
    with pytest.raises(FloatingPointError, match=r"'clip-7/VA'.*'maple-bench'"):
        run(ModalityRewardManager, _bad_score(value), data, tokenizer)
    with pytest.raises(FloatingPointError, match="'clip-7/VA'"):
        run(ModalityRewardManager, lambda **kw: value, data, tokenizer)  # a bare float result as well


def test_judge_failed_passes_through(tokenizer):
    data, lengths = make_batch(tokenizer, REPLIES[:1], [{"id": "c1", "sample_task": "caption"}])
    (out,) = run(ModalityRewardManager, _bad_score(float("nan"), judge_failed=1.0), data, tokenizer)
    assert math.isnan(out["reward_score"]) and out["reward_extra_info"]["judge_failed"] == 1.0
    assert out["reward_extra_info"]["response_tokens"] == lengths[0]
    with pytest.raises(FloatingPointError):  # judge_failed 0.0 does not excuse a NaN
        run(ModalityRewardManager, _bad_score(float("nan"), judge_failed=0.0), data, tokenizer)


def test_async_score_and_missing_extra_info(tokenizer):
    data, lengths = make_batch(tokenizer, REPLIES[:1], [{}])
    del data.non_tensor_batch["extra_info"]

    async def score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        return {"score": float(extra_info["response_tokens"]), "acc": 1.0}

    (out,) = run(ModalityRewardManager, score, data, tokenizer)
    assert out["reward_score"] == float(lengths[0])


def test_plugin_registers_the_manager_in_a_fresh_process():
    from helpers import run_json

    out = run_json(
        "import json, verl; from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls;"
        "from verl_modality import _register as r;"
        "c = get_reward_manager_cls('modality');"
        "print(json.dumps({'cls': c.__module__ + '.' + c.__name__, 'registered': r.REGISTERED['reward_managers'],"
        " 'errors': r.LOAD_ERRORS}))"
    )
    assert out == {
        "cls": "verl_modality.rewards.reward_manager.ModalityRewardManager",
        "registered": ["modality"],
        "errors": [],
    }
