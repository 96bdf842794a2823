"""Caption judge: strict reply parsing, the reward, the failure policy, verl's entry point, against a real server."""

import asyncio
import json
import logging
import math
import re

import pytest
from chat_server import ChatServer, Reply
from omegaconf import OmegaConf

from verl_modality.rewards import caption_judge as cj
from verl_modality.rewards.caption_judge import (
    CaptionItem,
    CaptionJudgeConfig,
    JudgeError,
    JudgeParseError,
    build_messages,
    compute_score,
    extract_caption,
    get_client,
    judge_captions,
    parse_judge_reply,
)

KEY_ENV = "VM_TEST_JUDGE_KEY"
KEY = "sk-judge-abcdef-secret"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def grades(m, e, f):
    return json.dumps({"missing": m, "errors": e, "fusion": f})


def scripted(body, n):
    """The candidate caption tells the server what to answer: ``GRADES m e f`` or ``SAY <raw text>``."""
    text = body["messages"][1]["content"]
    cand = re.search(r"<candidate>\n(.*)\n</candidate>", text, re.DOTALL).group(1)
    if cand.startswith("GRADES"):
        return Reply(grades(*map(float, cand.split()[1:])))
    if cand.startswith("SAY "):
        return Reply(cand[4:])
    if cand.startswith("FAIL"):
        return Reply(status=500, body=b"judge down")
    raise AssertionError(cand)


def judge_cfg(srv, **kw):
    base = dict(base_url=srv.base_url, model="judge-model", api_key_env=KEY_ENV, backoff_s=0.01, max_retries=1)
    return {**base, **kw}


def score(srv, response, extra_info=None, ground_truth="A man plays guitar while a dog barks.", **judge):
    cfg = judge_cfg(srv, **judge)
    info = {"id": "cap-7", "sample_task": "caption", "modality_tag": "VA"} if extra_info is None else extra_info

    async def run():
        try:
            return await compute_score("maple/caption", response, ground_truth, info, judge=cfg)
        finally:
            await get_client(CaptionJudgeConfig.from_dict(cfg)).aclose()

    return asyncio.run(run())


# ---- parsing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"missing": 1, "errors": 0.6, "fusion": 0.8}', (1.0, 0.6, 0.8)),
        ('  {"fusion": 0, "errors": 0.2, "missing": 0.4}\n', (0.4, 0.2, 0.0)),
        ('```json\n{"missing": 0.6000000001, "errors": 1.0, "fusion": 0.39999999}\n```', (0.6, 1.0, 0.4)),
    ],
)
def test_parse_valid(reply, expected):
    g = parse_judge_reply(reply)
    assert (g["missing"], g["errors"], g["fusion"]) == expected


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("Missing: 0.8, errors: 1.0, fusion: 0.6", "not one JSON object"),
        ('Here you go: {"missing": 1, "errors": 1, "fusion": 1}', "not one JSON object"),
        ('{"missing": 1, "errors": 1, "fusion": 1} {"missing": 0}', "not one JSON object"),
        ('{"missing": 1, "errors": 1}', "missing \\['fusion'\\]"),
        ('{"missing": 1, "errors": 1, "fusion": 1, "note": "x"}', "unexpected \\['note'\\]"),
        ('{"missing": 0.5, "errors": 1, "fusion": 1}', "missing is 0.5"),
        ('{"missing": 1, "errors": 1.2, "fusion": 1}', "errors is 1.2"),
        ('{"missing": 1, "errors": -0.2, "fusion": 1}', "errors is -0.2"),
        ('{"missing": 1, "errors": 1, "fusion": 0.6001}', "fusion is 0.6001"),
        ('{"missing": "0.8", "errors": 1, "fusion": 1}', "not a number"),
        ('{"missing": true, "errors": 1, "fusion": 1}', "not a number"),
        ('{"missing": NaN, "errors": 1, "fusion": 1}', "non-finite"),
        ('{"missing": 1, "missing": 0, "errors": 1, "fusion": 1}', "duplicate"),
        ("[1, 1, 1]", "not an object"),
        ("", "not one JSON object"),
    ],
)
def test_parse_rejects(reply, why):
    with pytest.raises(JudgeParseError, match=why):
        parse_judge_reply(reply)


# ---- prompt ------------------------------------------------------------------------------------------------------


def test_prompt_holds_the_tags_references_and_the_answer_tag_caption():
    item = CaptionItem.from_row(
        "plan: look first <answer>A dog barks at a guitarist.</answer>",
        "GT caption here.",
        {
            "id": "x",
            "modality_tag": "VA",
            "reference_captions": {"V": "a man with a guitar", "A": "barking", "S": None},
        },
    )
    system, user = build_messages(item)
    assert system["role"] == "system" and "0, 0.2, 0.4, 0.6, 0.8, 1" in system["content"]
    text = user["content"]
    assert "GT caption here." in text and "a man with a guitar" in text and "barking" in text
    assert "the video frames, the audio track." in text and "subtitles" not in text
    assert "<candidate>\nA dog barks at a guitarist.\n</candidate>" in text and "plan:" not in text
    assert extract_caption("<think>maybe <answer>X</answer></think> A cat.") == "A cat."
    assert extract_caption("  plain caption \n") == "plain caption"


@pytest.mark.parametrize(
    ("info", "why"),
    [
        ({"id": "r1", "modality_tag": "V", "reference_captions": {"A": "sound"}}, "stream 'A', which is not in tag"),
        ({"id": "r2", "modality_tag": "VX"}, "not a tag"),
        ({"id": "r3", "reference_captions": {"Q": "x"}}, "unknown stream 'Q'"),
        ({"id": "r4", "sample_task": "qa"}, "got a 'qa' row"),
    ],
)
def test_bad_rows_raise_naming_the_sample(info, why):
    with pytest.raises(ValueError, match=why) as err:
        CaptionItem.from_row("caption", "gt", info)
    assert info["id"] in str(err.value)


# ---- scoring against the server ----------------------------------------------------------------------------------


def test_score_is_the_mean_of_the_axes_and_request_is_deterministic():
    with ChatServer(scripted) as srv:
        r = score(srv, "GRADES 1.0 0.6 0.2", max_tokens=64)
    assert r["score"] == pytest.approx((1.0 + 0.6 + 0.2) / 3)
    assert (r["judge_failed"], r["judge_missing"], r["judge_errors"], r["judge_fusion"]) == (0.0, 1.0, 0.6, 0.2)
    assert r["judge_error"] == ""
    (seen,) = srv.seen
    assert seen.body["temperature"] == 0.0 and seen.body["max_tokens"] == 64 and seen.body["model"] == "judge-model"
    assert seen.headers["Authorization"] == f"Bearer {KEY}"


def test_equal_means_are_the_same_float():
    """Every grade triple with the same grid-step sum gets the same score, that sum over 15 (summing the grades
    themselves gives 0.6 for (1.0, 0.0, 0.8) but 0.6000000000000001 for (0.8, 0.4, 0.6)), and distinct sums stay
    distinct in verl's float32 rewards: verl's group filter on ``score`` then sees variance exactly where the rewards
    have it."""
    import itertools

    import numpy as np

    by_sum: dict[int, set[float]] = {}
    for steps in itertools.product(range(6), repeat=3):
        result = cj.success_result(dict(zip(cj.AXES, (cj.GRADES[k] for k in steps), strict=True)))
        by_sum.setdefault(sum(steps), set()).add(result["score"])
    assert all(scores == {total / 15} for total, scores in by_sum.items())
    assert len({np.float32(total / 15) for total in by_sum}) == len(by_sum) == 16
    assert len({sum((1.0, 0.0, 0.8)) / 3, sum((0.8, 0.4, 0.6)) / 3}) == 2  # what the grades' own sum gives


def test_unparseable_reply_is_asked_again():
    def responder(body, n):
        return Reply("The caption is good, I'd say 0.8 overall.") if n == 0 else Reply(grades(0.8, 0.8, 0.4))

    with ChatServer(responder) as srv:
        r = score(srv, "anything")
    assert r["score"] == pytest.approx(2.0 / 3) and r["judge_failed"] == 0.0
    assert srv.count == 2
    second = srv.seen[1].body["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == "The caption is good, I'd say 0.8 overall." and "JSON" in second[3]["content"]


def test_off_grid_reply_marked_after_bounded_reasks(caplog):
    with ChatServer(scripted) as srv, caplog.at_level(logging.WARNING, logger="verl_modality.rewards.caption_judge"):
        r = score(srv, 'SAY {"missing": 0.5, "errors": 1, "fusion": 1}', on_failure="mark", max_reasks=2)
    assert srv.count == 3
    assert math.isnan(r["score"]) and r["judge_failed"] == 1.0 and math.isnan(r["judge_fusion"])
    assert "missing is 0.5" in r["judge_error"]
    assert "cap-7" in caplog.text and "marked" in caplog.text


def test_missing_axis_raises_with_the_sample_id():
    with ChatServer(scripted) as srv:
        with pytest.raises(JudgeError, match="'cap-7'.*missing \\['fusion'\\]"):
            score(srv, 'SAY {"missing": 1, "errors": 1}', max_reasks=0)
    assert srv.count == 1


def test_endpoint_failure_raise_and_mark_never_zero():
    with ChatServer(scripted) as srv:
        with pytest.raises(JudgeError) as info:
            score(srv, "FAIL", on_failure="raise", max_retries=2)
        assert srv.count == 3  # HTTP retries only; a ChatError is not re-asked
        assert "'cap-7'" in str(info.value) and "HTTP 500" in str(info.value) and KEY not in str(info.value)
        marked = score(srv, "FAIL", on_failure="mark", max_retries=0)
    assert marked["judge_failed"] == 1.0 and math.isnan(marked["score"]) and marked["score"] != 0.0
    assert "HTTP 500" in marked["judge_error"] and KEY not in marked["judge_error"]


def test_success_and_failure_dicts_share_keys():
    # verl stacks a batch's reward dicts by the first one's keys
    with ChatServer(scripted) as srv:
        ok = score(srv, "GRADES 1 1 1", on_failure="mark")
        bad = score(srv, "SAY no", on_failure="mark", max_reasks=0)
    assert ok.keys() == bad.keys()


def test_module_client_and_cache_hold_across_calls(tmp_path):
    cache = str(tmp_path / "judge-cache")
    with ChatServer(scripted) as srv:
        cfg = CaptionJudgeConfig.from_dict(judge_cfg(srv, cache_dir=cache))
        assert get_client(cfg) is get_client(CaptionJudgeConfig.from_dict(judge_cfg(srv, cache_dir=cache)))
        a = score(srv, "GRADES 0.4 0.4 1", cache_dir=cache)
        b = score(srv, "GRADES 0.4 0.4 1", cache_dir=cache)
        assert srv.count == 1 and a == b and get_client(cfg).n_cache_hits == 1
    for p in (tmp_path / "judge-cache").rglob("*"):
        assert not p.is_file() or KEY not in p.read_text()


def test_concurrent_compute_score_respects_the_limit():
    def slow(body, n):
        return Reply(grades(1, 1, 1), delay_s=0.08)

    with ChatServer(slow) as srv:
        cfg = judge_cfg(srv, concurrency=2)

        async def run():
            calls = [
                compute_score("src", f"caption {i}", "gt", {"id": str(i)}, judge=cfg, reward_router_address=None)
                for i in range(8)
            ]
            try:
                return await asyncio.gather(*calls)
            finally:
                await get_client(CaptionJudgeConfig.from_dict(cfg)).aclose()

        out = asyncio.run(run())
    assert [r["score"] for r in out] == [1.0] * 8
    assert srv.count == 8 and srv.max_in_flight == 2


def test_judge_captions_offline_keeps_order():
    items = [
        {"id": "a", "response": "GRADES 1 0.8 0.6", "ground_truth": "gt", "modality_tag": "S"},
        {"id": "b", "response": "SAY nope", "ground_truth": "gt", "reference_captions": {"S": "words"}},
        {"id": "c", "response": "GRADES 0 0 0.2", "ground_truth": "gt", "extra": "ignored"},
    ]
    with ChatServer(scripted) as srv:
        out = judge_captions(items, judge_cfg(srv, on_failure="mark", max_reasks=1), progress=False)
        assert out[0]["score"] == pytest.approx(0.8) and out[2]["score"] == pytest.approx(0.2 / 3)
        assert out[1]["judge_failed"] == 1.0
        with pytest.raises(JudgeError, match="'b'"):
            judge_captions(items, CaptionJudgeConfig(**judge_cfg(srv, max_reasks=0)), progress=True)
        with pytest.raises(ValueError, match="lacks \\['ground_truth'\\]"):
            judge_captions([{"id": "d", "response": "x"}], judge_cfg(srv))


def test_config_from_reward_kwargs():
    node = OmegaConf.create({"base_url": "http://127.0.0.1:9/v1", "model": "m", "extra_params": {"seed": 1}})
    cfg = CaptionJudgeConfig.from_dict(node)
    assert cfg.on_failure == "raise" and cfg.temperature == 0.0 and cfg.extra_params == {"seed": 1}
    assert cfg.request_params() == {"seed": 1, "temperature": 0.0, "max_tokens": 256}
    with pytest.raises(
        ValueError, match="unknown option\\(s\\) reward.custom_reward_function.reward_kwargs.judge.\\['modle'\\]"
    ):
        CaptionJudgeConfig.from_dict({"base_url": "http://x/v1", "modle": "m"})
    with pytest.raises(ValueError, match="on_failure"):
        CaptionJudgeConfig.from_dict({"base_url": "http://x/v1", "model": "m", "on_failure": "zero"})
    with pytest.raises(ValueError, match="lacks \\['model'\\]"):
        CaptionJudgeConfig.from_dict({"base_url": "http://x/v1"})
    with pytest.raises(ValueError, match="unknown reward_kwargs \\['judgee'\\]"):
        asyncio.run(compute_score("s", "c", "gt", {}, judgee={}))
    with pytest.raises(ValueError, match="reward_kwargs.judge"):
        asyncio.run(compute_score("s", "c", "gt", {}))
    assert cj.AXES == {"missing": "judge_missing", "errors": "judge_errors", "fusion": "judge_fusion"}


def test_loaded_through_verls_custom_reward_function():
    import inspect

    from verl.trainer.ppo.reward import get_custom_reward_fn

    with ChatServer(scripted) as srv:
        cfg = judge_cfg(srv, concurrency=4)
        config = OmegaConf.create(
            {
                "reward": {
                    "custom_reward_function": {
                        "path": "pkg://verl_modality.rewards.caption_judge",
                        "name": "compute_score",
                        "reward_kwargs": {"judge": cfg},
                    }
                }
            }
        )
        fn = get_custom_reward_fn(config)
        assert inspect.iscoroutinefunction(fn)  # verl's reward manager awaits it on its own loop

        async def run():
            try:
                return await fn(
                    data_source="maple/caption",
                    solution_str="GRADES 0.8 1 0.6",
                    ground_truth="gt",
                    extra_info={"id": "v1", "modality_tag": "AS", "reference_captions": {"A": "a", "S": "s"}},
                )
            finally:
                await get_client(CaptionJudgeConfig.from_dict(cfg)).aclose()

        r = asyncio.run(run())
    assert r["score"] == pytest.approx(0.8) and r["judge_failed"] == 0.0
