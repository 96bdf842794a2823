"""The caption judge and the OpenAI-compatible voter against a real vLLM server (``tests/vllm_server.py``) serving
the tiny random Qwen2.5-Omni checkpoint on the CPU.

A random model answers nonsense, so these tests check the transport (requests, multimodal content parts, multi-turn
re-asks, the cache), the parsing (a reply forced into the judge's format by vLLM's structured outputs) and the
failure policy (``mark``: NaN score and ``judge_failed``; ``raise``: an error naming the sample), never the grades.
One server serves the whole module.
"""

from __future__ import annotations

import asyncio
import copy
import math

import httpx
import pytest

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT_S = 420
GRADES = '{"missing": 0.4, "errors": 0.2, "fusion": 1}'


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    from vllm_server import VLLMServer

    from verl_modality.evaluation.backends import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (or cannot run here)")
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    srv = VLLMServer(str(tiny_model_dir), log, max_model_len=4096, startup_timeout_s=STARTUP_TIMEOUT_S)
    with srv:
        print(f"\n[vllm server] answered /v1/models after {srv.startup_s:.1f}s")
        yield srv


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.evaluation.runner import load_rows

    out = tmp_path_factory.mktemp("endpoint_demo")
    make_demo_data(out, seed=0, n_train=1, n_test=7, progress=False)
    return load_rows(str(out / "test.parquet"))


def _items(n: int = 3) -> list[dict]:
    return [
        {
            "id": f"cap-{i}",
            "response": "A dog barks twice while a red ball rolls across the floor.",
            "ground_truth": "A small dog barks at a rolling red ball.",
            "reference_captions": {"V": "A red ball rolls on a wooden floor.", "A": "Two short barks."},
            "modality_tag": "VA",
        }
        for i in range(n)
    ]


def _judge(server, tmp_path, **kw) -> dict:
    cfg = {
        "base_url": server.base_url,
        "model": server.model,
        "timeout_s": 120.0,
        "max_retries": 1,
        "backoff_s": 0.1,
        "max_tokens": 24,
        "max_reasks": 1,
        "cache_dir": str(tmp_path / "judge_cache"),  # also keeps each test's client apart (get_client's key)
    }
    cfg.update(kw)
    return cfg


def _usage(server, messages: list[dict]) -> int:
    body = {"model": server.model, "messages": messages, "max_tokens": 1, "temperature": 0}
    resp = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return int(resp.json()["usage"]["prompt_tokens"])


# ------------------------------------------------------------------------------------------------------ voter


def test_voter_sends_audio_and_video_parts(server, rows, tiny_model_dir, tmp_path):
    """Every demo row (A, VA, VAS, V, VS, S, AS) answered with its media as content parts; the server expands each
    audio and video part to as many tokens as the hf processor does; a repeated call is served from the cache."""
    from verl_modality.audio_contribution.voters import OpenAIVoter, VoterSpec, _encode_file, openai_messages
    from verl_modality.models.generation import row_prompt
    from verl_modality.models.omni import load_omni_processor

    spec = VoterSpec(
        name="tiny",
        kind="openai",
        base_url=server.base_url,
        model=server.model,
        max_response_length=8,
        cache_dir=str(tmp_path / "voter_cache"),
        timeout_s=120.0,
        max_retries=1,
    )
    voter = OpenAIVoter(spec)
    answers = voter.answer(rows)
    assert len(answers) == len(rows) and all(isinstance(a, str) for a in answers)
    assert voter.client.n_requests == len(rows)
    assert voter.answer(rows) == answers  # greedy, and from the disk cache
    assert (voter.client.n_requests, voter.client.n_cache_hits) == (len(rows), len(rows))

    proc = load_omni_processor(str(tiny_model_dir))
    media_tokens = {}
    for row in rows:
        messages = openai_messages(row, _encode_file)
        parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
        kinds = {p["type"] for p in parts} - {"text"}
        prompt_text = " ".join(m["content"] for m in row["prompt"])
        wanted = ({"input_audio"} if "<audio>" in prompt_text else set()) | (
            {"video_url"} if "<video>" in prompt_text else set()
        )
        assert kinds == wanted, row["id"]
        if not kinds:
            continue
        text_only = [
            {**m, "content": "".join(p.get("text", "") for p in m["content"])} if isinstance(m["content"], list) else m
            for m in messages
        ]
        extra = _usage(server, messages) - _usage(server, text_only)
        hf_ids = row_prompt(row, proc).prompt_ids
        n_audio = hf_ids.count(proc.audio_token_id)
        n_video = hf_ids.count(proc.video_token_id)
        media_tokens[row["id"]] = (extra, n_audio, n_video)
        # each part: <|..._bos|> + its expanded placeholder run + <|..._eos|>. vLLM decodes the mp4 itself (the hf
        # side decodes it with the project's reader), and for the demo clips both give the same 8 video tokens.
        expected = (n_audio + 2 if "input_audio" in kinds else 0) + (n_video + 2 if "video_url" in kinds else 0)
        assert extra == expected, (row["id"], extra, n_audio, n_video)
    print(f"\n[vllm server] media tokens (server, hf audio, hf video) per row: {media_tokens}")


def test_voter_errors_name_the_voter_and_the_sample(server, rows):
    from verl_modality.audio_contribution.voters import OpenAIVoter, VoterError, VoterSpec
    from verl_modality.data import schema

    def voter(**kw):
        base = {"name": "tiny", "kind": "openai", "base_url": server.base_url, "model": server.model}
        return OpenAIVoter(VoterSpec(**{**base, "max_response_length": 4, "max_retries": 0, **kw}))

    with pytest.raises(VoterError, match=r"voter 'wrong', sample 'demo-test-0000': .*HTTP 404"):
        voter(name="wrong", model="no-such-model").answer(rows[:2])

    audio_row = next(r for r in rows if r["modality_tag"] == "A")
    crowded = copy.deepcopy(audio_row)  # three audio parts: over the server's --limit-mm-per-prompt of 2
    crowded[schema.ID] = "crowded"
    crowded[schema.AUDIOS] = list(crowded[schema.AUDIOS]) * 3
    crowded[schema.PROMPT] = [
        {**m, "content": m["content"].replace("<audio>", "<audio><audio><audio>")} for m in crowded[schema.PROMPT]
    ]
    with pytest.raises(VoterError, match=r"voter 'tiny', sample 'crowded': .*HTTP 400"):
        voter().answer([audio_row, crowded])


# ------------------------------------------------------------------------------------------------------ judge


def test_judge_parses_a_reply_in_its_format(server, tmp_path):
    """vLLM's structured outputs make the random model reply with exactly one grade object: the client's transport
    and the judge's parsing, end to end; a second run is answered from the cache."""
    from verl_modality.rewards.caption_judge import get_client, judge_captions

    cfg = _judge(server, tmp_path, max_tokens=64, extra_params={"structured_outputs": {"choice": [GRADES]}})
    results = judge_captions(_items(), cfg, progress=False)
    for r in results:
        assert r["judge_failed"] == 0.0 and r["judge_error"] == ""
        assert (r["judge_missing"], r["judge_errors"], r["judge_fusion"]) == (0.4, 0.2, 1.0)
        assert math.isclose(r["score"], (0.4 + 0.2 + 1.0) / 3)
    from verl_modality.rewards.caption_judge import CaptionJudgeConfig

    client = get_client(CaptionJudgeConfig.from_dict(cfg))
    assert client.n_requests == 3
    assert judge_captions(_items(), cfg, progress=False) == results
    assert (client.n_requests, client.n_cache_hits) == (3, 3)


def test_judge_nonsense_is_marked_or_raised(server, tmp_path):
    """Unparseable replies: one re-ask turn each (a multi-turn request the server accepts), then the failure
    policy."""
    from verl_modality.rewards.caption_judge import CaptionJudgeConfig, JudgeError, get_client, judge_captions

    cfg = _judge(server, tmp_path, on_failure="mark")
    results = judge_captions(_items(), cfg, progress=False)
    for r in results:
        assert r["judge_failed"] == 1.0 and math.isnan(r["score"])
        assert all(math.isnan(r[k]) for k in ("judge_missing", "judge_errors", "judge_fusion"))
        assert r["judge_error"].startswith("unparseable judge reply")
    assert get_client(CaptionJudgeConfig.from_dict(cfg)).n_requests == 3 * 2  # the first ask and one re-ask each

    # verl's reward-function entry point, same policy
    from verl_modality.rewards.caption_judge import compute_score

    item = _items(1)[0]
    extra = {"id": "cap-v", "sample_task": "caption", "reference_captions": item["reference_captions"]}
    out = asyncio.run(compute_score("demo", item["response"], item["ground_truth"], extra, judge=cfg))
    assert out["judge_failed"] == 1.0 and math.isnan(out["score"])

    with pytest.raises(JudgeError, match=r"caption judge failed for sample 'cap-0': unparseable judge reply"):
        judge_captions(_items(), {**cfg, "on_failure": "raise"}, progress=False)


def test_judge_endpoint_errors_are_marked_or_raised(server, tmp_path):
    from verl_modality.rewards.caption_judge import JudgeError, judge_captions

    cfg = _judge(server, tmp_path, model="no-such-model", on_failure="mark")
    (r,) = judge_captions(_items(1), cfg, progress=False)
    assert r["judge_failed"] == 1.0 and math.isnan(r["score"]) and "HTTP 404" in r["judge_error"]
    with pytest.raises(JudgeError, match=r"caption judge failed for sample 'cap-0': .*HTTP 404"):
        judge_captions(_items(1), {**cfg, "on_failure": "raise"}, progress=False)


def test_a_server_that_does_not_come_up_in_time_is_stopped(tmp_path, tiny_model_dir):
    """The startup guard: past ``startup_timeout_s`` the server's whole process group is killed and the error shows
    its log (here 3 s: the API server is still importing vLLM)."""
    import os

    from vllm_server import VLLMServer

    from verl_modality.evaluation.backends import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (or cannot run here)")
    srv = VLLMServer(str(tiny_model_dir), tmp_path / "server.log", startup_timeout_s=3)
    with pytest.raises(TimeoutError, match="did not answer within 3s"):
        srv.start()
    assert srv.proc is None
    with pytest.raises(ProcessLookupError):
        os.killpg(int(srv.pgid), 0)
