"""The mixed-data router: QA rows by the answer reward, caption rows by the judge (a real local server) with
contrastive weighting on the deficit response; every row returns the same keys."""

import asyncio
import json
import math

import pytest
from chat_server import ChatServer, Reply

from verl_modality.rewards import choice
from verl_modality.rewards.caption_judge import CaptionJudgeConfig, get_client
from verl_modality.rewards.score import RESULT_KEYS, compute_score

KEY_ENV = "VM_TEST_ROUTER_KEY"
CAPTION = "A man plays guitar on a porch while a dog barks."


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-router")


def _grades(body, n):
    if "JUDGE-DOWN" in body["messages"][1]["content"]:
        return Reply(status=500, body=b"down")
    return Reply(json.dumps({"missing": 0.6, "errors": 0.8, "fusion": 0.4}))  # mean 0.6


def _run(srv, response, info, ground_truth=CAPTION, **kwargs):
    judge = dict(base_url=srv.base_url, model="j", api_key_env=KEY_ENV, backoff_s=0.01, max_retries=0)
    judge.update(kwargs.pop("judge", {}))

    async def go():
        try:
            return await compute_score("maple", response, ground_truth, info, judge=judge, **kwargs)
        finally:
            await get_client(CaptionJudgeConfig.from_dict(judge)).aclose()

    return asyncio.run(go())


def _caption_info(**kw):
    return {"id": "c-1", "sample_task": "caption", "modality_tag": "VA", **kw}


def test_qa_rows_match_the_answer_reward_and_share_the_key_set():
    with ChatServer(_grades) as srv:
        info = {"id": "q-1", "sample_task": "qa", "choices": ["red", "blue", "green"]}
        out = _run(srv, "It is blue. [B]", info, ground_truth="B", format_weight=0.5)
        caption = _run(srv, CAPTION, _caption_info())
        assert len(srv.seen) == 1  # only the caption row reached the judge
    direct = choice.compute_score("maple", "It is blue. [B]", "B", info, format_weight=0.5)
    assert set(out) == set(caption) == set(RESULT_KEYS)
    # the QA row: the answer reward's values, unchanged
    assert {k: out[k] for k in direct} == {k: v for k, v in direct.items()}
    assert out["score"] == 1.5 and out["judge_failed"] == 0.0 and out["judge_missing"] is None
    # the caption row: the judge's mean, no QA fields
    assert caption["score"] == pytest.approx(0.6) and caption["judge_score"] == pytest.approx(0.6)
    assert caption["acc"] == pytest.approx(0.6) and caption["parsed"] is None and caption["crw_similarity"] is None


def test_contrastive_weighting_uses_the_deficit_response():
    crw = {"enable": True, "alpha": 0.5, "tau": 0.8, "similarity": "embedding"}
    with ChatServer(_grades) as srv:
        same = _run(srv, CAPTION, _caption_info(deficit_response=CAPTION), contrastive=crw)
        other = _run(srv, CAPTION, _caption_info(deficit_response="Rain falls on an empty street."), contrastive=crw)
        none = _run(srv, CAPTION, _caption_info(deficit_response=None), contrastive=crw)
    # identical negative: s = 1 >= tau, no boost; a different one: s < tau, R = 0.6 * 1.5
    assert same["score"] == pytest.approx(0.6) and same["crw_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert same["crw_boosted"] == 0.0
    assert other["score"] == pytest.approx(0.9) and other["crw_boosted"] == 1.0 and other["crw_similarity"] < 0.8
    assert other["judge_score"] == pytest.approx(0.6)
    assert none["score"] == pytest.approx(0.6) and none["crw_similarity"] is None


def test_caption_without_judge_or_deficit_field_and_unknown_kwargs_raise():
    with pytest.raises(ValueError, match="reward_kwargs.judge is not set"):
        asyncio.run(compute_score("maple", CAPTION, CAPTION, _caption_info()))
    with ChatServer(_grades) as srv:
        with pytest.raises(ValueError, match="modality_agent"):
            _run(srv, CAPTION, _caption_info(), contrastive={"enable": True})
    with pytest.raises(ValueError, match="unknown reward_kwargs"):
        asyncio.run(compute_score("maple", "[A]", "A", {"choices": ["a", "b"]}, format_bonus=1))


def test_judge_failure_is_marked_not_zero():
    with ChatServer(_grades) as srv:
        out = _run(srv, "JUDGE-DOWN", _caption_info(), judge={"on_failure": "mark"})
    assert out["judge_failed"] == 1.0 and math.isnan(out["score"]) and "500" in out["judge_error"]
    assert out["acc"] is None and out["judge_missing"] is None  # skipped by verl's validation metrics
