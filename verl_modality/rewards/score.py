"""One reward function for mixed QA and caption data: the answer reward for QA rows, the caption judge (with optional
contrastive reward weighting) for caption rows.

    reward:
      reward_manager: {name: modality}           # response lengths, NaN check (verl_modality.rewards.reward_manager)
      custom_reward_function:
        path: pkg://verl_modality.rewards.score
        name: compute_score
        reward_kwargs:
          answer_weight: 1.0                     # QA rows: the fields of rewards.choice.AnswerRewardConfig
          format_weight: 0.0
          judge: {base_url: ..., model: ..., api_key_env: JUDGE_API_KEY}   # caption rows: rewards.caption_judge
          contrastive: {enable: true, alpha: 0.2, tau: 0.8}   # captions: rewards.contrastive (docs/method.md §4)

A row's task is ``extra_info["sample_task"]`` (written by the schema). verl stacks the per-sample result dicts of a
batch by the first one's keys, so every row returns the same keys (:data:`RESULT_KEYS`); a field that does not apply
to a row is None, which verl's validation metrics skip. ``acc`` is the QA correctness or the caption's judge score
(None when the judge failed: the failure shows in ``judge_failed``; the score itself is then NaN, see
:mod:`verl_modality.rewards.failed_scores`). Contrastive weighting needs the deficit response that the
``modality_agent`` agent loop generates (``extra_info["deficit_response"]``,
:mod:`verl_modality.rollout.deficit_agent_loop`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from verl_modality import protocol
from verl_modality.rewards import choice

QA_KEYS = (protocol.REWARD_ACC, "formatted", "parsed", "pred_none", "gold_none", "string_match")
CAPTION_KEYS = (protocol.REWARD_JUDGE_FAILED, "judge_missing", "judge_errors", "judge_fusion", "judge_error")
CRW_KEYS = ("judge_score", "crw_similarity", "crw_boosted")
RESULT_KEYS = ("score", *QA_KEYS, *CAPTION_KEYS, *CRW_KEYS)
_VERL_KWARGS = ("reward_router_address", "reward_model_tokenizer")


def _complete(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    out.update({k: v for k, v in result.items() if k in out})
    return out


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    judge = kwargs.get("judge")
    contrastive = kwargs.get("contrastive")
    qa = {k: v for k, v in kwargs.items() if k not in ("judge", "contrastive", *_VERL_KWARGS)}
    unknown = sorted(set(qa) - set(choice.ANSWER_KWARGS))
    if unknown:
        raise ValueError(
            f"{__name__}: unknown reward_kwargs {unknown}; known: {list(choice.ANSWER_KWARGS)} (QA rows), "
            "'judge' and 'contrastive' (caption rows)"
        )
    return qa, judge, contrastive


async def _caption_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any], judge: Any, contrastive: Any
) -> dict[str, Any]:
    from verl_modality.rewards import caption_judge
    from verl_modality.rewards.contrastive import ContrastiveConfig, reweight_scores, shared_similarity

    if judge is None:
        raise ValueError(
            f"row {extra_info.get(protocol.INFO_ID)!r} ({data_source}) is a caption row, but reward_kwargs.judge is not set "
            "(base_url, model, api_key_env, ...: see docs/caption_judge.md)"
        )
    result = dict(await caption_judge.compute_score(data_source, solution_str, ground_truth, extra_info, judge=judge))
    result["judge_score"] = result["score"]
    if result.get(protocol.REWARD_JUDGE_FAILED):
        return {
            "score": result["score"],
            protocol.REWARD_JUDGE_FAILED: 1.0,
            "judge_error": result.get("judge_error", ""),
        }
    result[protocol.REWARD_ACC] = result["score"]
    config = ContrastiveConfig.from_config(contrastive) if contrastive is not None else None
    if config is None or not config.enable:
        return result
    if protocol.DEFICIT_RESPONSE not in extra_info:
        raise ValueError(
            f"row {extra_info.get(protocol.INFO_ID)!r}: reward_kwargs.contrastive.enable needs the deficit response of the "
            "modality_agent agent loop (actor_rollout_ref.rollout.agent.default_agent_loop=modality_agent)"
        )
    negative = extra_info.get(protocol.DEFICIT_RESPONSE)
    if negative is None:  # no deficit condition exists for this row (e.g. a single shown stream): unweighted
        return result
    loop = asyncio.get_running_loop()
    new, metrics = await loop.run_in_executor(
        None, lambda: reweight_scores([result["score"]], [solution_str], [negative], shared_similarity(config), config)
    )
    result["score"] = float(new[0])
    result["crw_similarity"] = metrics["contrastive/similarity_mean"]
    result["crw_boosted"] = metrics["contrastive/boosted_frac"]  # 1.0 when s < tau (the boost's gate is open)
    return result


async def compute_score(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict[str, Any] | None = None, **kwargs: Any
) -> dict[str, Any]:
    """verl's custom reward function for mixed data (see the module docstring); returns :data:`RESULT_KEYS`."""
    qa_kwargs, judge, contrastive = _split_kwargs(kwargs)
    info = dict(extra_info or {})
    if info.get(protocol.INFO_TASK) == "caption":
        result = await _caption_score(data_source, solution_str, ground_truth, info, judge, contrastive)
    else:
        result = choice.compute_score(data_source, solution_str, ground_truth, info, **qa_kwargs)
        result = {**result, protocol.REWARD_JUDGE_FAILED: 0.0}
    return _complete(result)
