"""The ``modality_agent`` loop, in-process: verl's single-turn behaviour plus the deficit response of caption rows.

The loops are instantiated from verl's agent loop registry exactly as verl's rollout worker does, on the tiny
Qwen2.5-Omni processor, with dataset rows from ``OmniRLDataset`` (demo QA rows and caption rows over the same media)
and a fake rollout server that records every request.
"""

import re
import subprocess
import sys
from uuid import uuid4

import numpy as np
import pytest

from verl_modality.data import prompts, schema
from verl_modality.rewards.contrastive import ContrastiveConfig, deficit_streams
from verl_modality.rollout import deficit_agent_loop as dal

SAMPLING = {"temperature": 0.9, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
MAIN_TEXT = " a clip"
DEFICIT_TEXT = "a red square"


class FakeServer:
    """verl's ``LLMServerClient.generate`` stand-in: records each call; the first call of a trajectory answers
    ``MAIN_TEXT``, later ones ``DEFICIT_TEXT`` followed by EOS (a special token the decoded text must not hold)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls: list[dict] = []

    async def generate(self, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append(kwargs)
        text = MAIN_TEXT if len(self.calls) == 1 else DEFICIT_TEXT
        ids = self.tokenizer.encode(text) + [self.tokenizer.eos_token_id]
        return TokenOutput(token_ids=ids, log_probs=[-0.5 - 0.1 * i for i in range(len(ids))])


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from verl_modality.models.omni import load_omni_processor

    return load_omni_processor(str(tiny_model_dir))


@pytest.fixture(scope="module")
def data(tmp_path_factory, processor):
    """(QA dataset, caption dataset): the seven demo rows (one per tag) and a caption row over each one's media."""
    from omegaconf import OmegaConf

    from verl_modality.data.dataset import OmniRLDataset
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("deficit_loop")
    make_demo_data(root, seed=0, n_train=7, n_test=0, progress=False)
    captions = []
    for row in schema.read_rows(root / "train.parquet"):
        s = schema.Sample.from_row(row)
        captions.append(
            schema.Sample.create(
                id=f"{s.id}-cap",
                question=prompts.CAPTION_INSTRUCTION,
                choices=[],
                answer="A coloured clip with beeps and a line about an animal.",
                modality_tag=s.modality_tag,
                videos=s.all_videos,
                audios=s.all_audios,
                subtitle=s.subtitle,
                task="caption",
                data_source=s.data_source,
                index=s.index,
            ).to_row()
        )
    schema.write_rows(captions, root / "caption.parquet")
    config = OmegaConf.create({"max_prompt_length": 4096, "filter_overlong_prompts": False})
    qa = OmniRLDataset(str(root / "train.parquet"), processor.tokenizer, config, processor=processor)
    cap = OmniRLDataset(str(root / "caption.parquet"), processor.tokenizer, config, processor=processor)
    return qa, cap


def make_loop(processor, data, name: str, contrastive: dict | None = None, response_length: int = 16, dataset=None):
    """An agent loop built as ``AgentLoopWorker._run_agent_loop`` builds it (hydra, from verl's registry)."""
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry

    config = OmegaConf.create(
        {
            "actor_rollout_ref": {"rollout": {"prompt_length": 4096, "response_length": response_length}},
            "data": (dataset or data[0]).config,
            "reward": {"custom_reward_function": {"reward_kwargs": {"contrastive": contrastive or {}}}},
        }
    )
    server = FakeServer(processor.tokenizer)
    loop = hydra.utils.instantiate(
        config=_agent_loop_registry[name],
        trainer_config=DictConfigWrap(config=config),
        server_manager=server,
        tokenizer=processor.tokenizer,
        processor=processor,
        hf_model_type="qwen2_5_omni",
        dataset_cls=type(data[0]),
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
    )
    return loop, server


def run(loop, row: dict, priority: int = 3):
    return loop.loop.run_until_complete(loop.run(dict(SAMPLING), priority=priority, **row))


def same(x, y) -> bool:
    """Deep equality over dicts, lists, tuples, numpy arrays and tensors."""
    import torch

    if isinstance(x, (np.ndarray, torch.Tensor)) or isinstance(y, (np.ndarray, torch.Tensor)):
        return type(x) is type(y) and x.shape == y.shape and bool((np.asarray(x) == np.asarray(y)).all())
    if isinstance(x, dict) and isinstance(y, dict):
        return sorted(x) == sorted(y) and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(same(p, q) for p, q in zip(x, y, strict=True))
    return x == y


def assert_same_output(a, b, extra_a: dict | None = None):
    """Two AgentLoopOutputs are equal (timings aside); ``extra_a`` = fields only ``a`` has in ``extra_fields``."""
    da, db = a.model_dump(exclude={"metrics"}), b.model_dump(exclude={"metrics"})
    ea, eb = da.pop("extra_fields"), db.pop("extra_fields")
    assert sorted(da) == sorted(db)
    for key in da:
        assert same(da[key], db[key]), key
    assert ea == {**eb, **(extra_a or {})}
    assert a.metrics.num_preempted == b.metrics.num_preempted


def assert_same_request(a: dict, b: dict, skip=("request_id",)):
    assert sorted(a) == sorted(b)
    for key in a:
        assert key in skip or same(a[key], b[key]), key


# ------------------------------------------------------------------------------------------------ registration


@pytest.mark.parametrize("first", ["verl", "verl_modality.rewards.contrastive"])
def test_registered_when_verl_is_imported_in_a_fresh_process(first):
    # a rollout worker only imports verl: the plugin must make the name resolvable there, whatever comes first
    code = (
        f"import {first}\n"
        "from verl_modality import _register\n"
        "assert not _register.LOAD_ERRORS, _register.LOAD_ERRORS\n"
        "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry\n"
        "from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop\n"
        "from hydra.utils import get_class\n"
        "cls = get_class(_agent_loop_registry['modality_agent']['_target_'])\n"
        "assert issubclass(cls, SingleTurnAgentLoop), cls\n"
        "print(cls.__module__ + '.' + cls.__qualname__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "verl_modality.rollout.deficit_agent_loop.ModalityAgentLoop"


def test_config_is_read_from_the_reward_kwargs():
    from omegaconf import OmegaConf

    def cfg(**reward):
        return OmegaConf.create({"reward": reward})

    assert dal.contrastive_config(OmegaConf.create({})) == ContrastiveConfig()  # absent: off
    on = cfg(custom_reward_function={"reward_kwargs": {"contrastive": {"enable": True, "alpha": 0.5, "seed": 7}}})
    assert dal.contrastive_config(on) == ContrastiveConfig(enable=True, alpha=0.5, seed=7)
    # one place only: the reward router reads the same node
    assert dal.contrastive_config(cfg(contrastive={"enable": True})) == ContrastiveConfig()
    with pytest.raises(ValueError, match="unknown"):
        dal.contrastive_config(cfg(custom_reward_function={"reward_kwargs": {"contrastive": {"alpa": 1.0}}}))


# ------------------------------------------------------------------------------------------ the parent's output


@pytest.mark.parametrize("enable", [True, False])
def test_qa_rows_match_single_turn_agent_loop(processor, data, enable):
    qa, _ = data
    for i in range(len(qa)):
        row = qa[i]
        ours, our_server = make_loop(processor, data, "modality_agent", {"enable": enable})
        theirs, their_server = make_loop(processor, data, "single_turn_agent")
        a, b = run(ours, row), run(theirs, row)
        assert len(our_server.calls) == 1 and len(their_server.calls) == 1
        assert_same_request(our_server.calls[0], their_server.calls[0])
        extra = None
        if enable:  # every row carries the keys when the weighting is on (verl concatenates workers key by key)
            extra = {
                "deficit_response": None,
                "deficit_streams": None,
                "deficit_skip_reason": "not a caption row (task 'qa')",
            }
        assert_same_output(a, b, extra)
        assert b.response_ids == processor.tokenizer.encode(MAIN_TEXT) + [processor.tokenizer.eos_token_id]


def test_weighting_off_leaves_caption_rows_to_the_parent(processor, data):
    _, cap = data
    for i in range(len(cap)):
        ours, our_server = make_loop(processor, data, "modality_agent", {"enable": False})
        theirs, their_server = make_loop(processor, data, "single_turn_agent")
        a, b = run(ours, cap[i]), run(theirs, cap[i])
        assert len(our_server.calls) == 1
        assert_same_request(our_server.calls[0], their_server.calls[0])
        assert_same_output(a, b)


# ---------------------------------------------------------------------------------------- the deficit response

_PARAGRAPH = {
    "V": r"Video: <\|vision_bos\|>(<\|VIDEO\|>)+<\|vision_eos\|>\n\n",
    "A": r"Audio: <\|audio_bos\|>(<\|AUDIO\|>)+<\|audio_eos\|>\n\n",
    "S": r'Subtitles: "[^"]*"\n\n',
}


def test_caption_rows_get_a_deficit_response_without_the_dropped_streams(processor, data):
    _, cap = data
    tok = processor.tokenizer
    ids = {"V": processor.video_token_id, "A": processor.audio_token_id}
    seen = set()
    for i in range(len(cap)):
        row = cap[i]
        tag = row["modality_tag"]
        if len(tag) < 2:
            continue
        loop, server = make_loop(processor, data, "modality_agent", {"enable": True, "seed": 3})
        out = run(loop, {**row, "uid": uuid4().hex}, priority=5)
        shown = deficit_streams(tag, row["available"], "any", 3, row["id"])
        dropped = "".join(s for s in row["available"] if s not in shown)
        seen.add(dropped)

        assert len(server.calls) == 2
        main, twin = server.calls
        # the main request is the parent's; the twin is the same request without the dropped streams
        assert twin["sampling_params"] == main["sampling_params"] == SAMPLING
        assert twin["priority"] == main["priority"] == 5 and twin["request_id"] != main["request_id"]
        full_text = tok.decode(main["prompt_ids"])
        twin_text = tok.decode(twin["prompt_ids"])
        expected = full_text
        for s in dropped:
            expected, n = re.subn(_PARAGRAPH[s], "", expected)
            assert n == 1, (s, full_text)
        assert twin_text == expected
        for s, token in ids.items():
            if s not in row["available"]:
                continue
            n_full, n_twin = main["prompt_ids"].count(token), twin["prompt_ids"].count(token)
            assert n_full > 0 and n_twin == (n_full if s in shown else 0), (tag, shown, s)
        # the twin's media are the same decoded arrays, minus the dropped streams
        for s, key in (("V", "video_data"), ("A", "audio_data")):
            if s in shown:
                assert same(twin[key], main[key])
            else:
                assert twin[key] is None

        assert out.extra_fields["deficit_response"] == DEFICIT_TEXT  # decoded, EOS skipped
        assert out.extra_fields["deficit_streams"] == shown
        assert out.extra_fields["deficit_skip_reason"] is None
        # the trajectory itself is the parent's
        assert out.response_ids == tok.encode(MAIN_TEXT) + [tok.eos_token_id]
        assert out.prompt_ids == main["prompt_ids"]
    assert len(seen) >= 3  # several different drops were exercised


def test_single_stream_caption_rows_record_why_they_have_none(processor, data):
    _, cap = data
    rows = [cap[i] for i in range(len(cap)) if len(cap[i]["modality_tag"]) == 1]
    assert len(rows) == 3
    for row in rows:
        loop, server = make_loop(processor, data, "modality_agent", {"enable": True})
        out = run(loop, row)
        assert len(server.calls) == 1
        assert out.extra_fields["deficit_response"] is None and out.extra_fields["deficit_streams"] is None
        assert "no deficit condition" in out.extra_fields["deficit_skip_reason"]
        assert row["id"] in out.extra_fields["deficit_skip_reason"]
    # a caption row shown no stream at all (text only) has nothing to remove either
    row = {**next(cap[i] for i in range(len(cap)) if cap[i]["modality_tag"] == "VA"), "available": ""}
    loop, server = make_loop(processor, data, "modality_agent", {"enable": True})
    out = run(loop, row)
    assert len(server.calls) == 1 and out.extra_fields["deficit_response"] is None
    assert "shows no stream" in out.extra_fields["deficit_skip_reason"]


@pytest.mark.parametrize("view", [None, {"policy": "exact", "ablation": "blank"}])
def test_blank_ablation_keeps_the_prompt_and_blanks_the_dropped_stream(processor, data, view):
    """Blank twins have the full prompt's tokens; the dropped stream is silence / black frames of the same shape.
    ``view``: the dataset's own ``data.modality`` (None: as stored; exact+blank gives every record stream a slot)."""
    from omegaconf import OmegaConf

    from verl_modality.data.dataset import OmniRLDataset

    _, cap = data
    dataset = cap
    if view is not None:
        config = OmegaConf.create({"max_prompt_length": 4096, "filter_overlong_prompts": False, "modality": view})
        dataset = OmniRLDataset(cap.data_files, processor.tokenizer, config, processor=processor)
    row = next(dataset[i] for i in range(len(dataset)) if dataset[i]["modality_tag"] == "VA")
    loop, server = make_loop(processor, data, "modality_agent", {"enable": True, "ablation": "blank"}, dataset=dataset)
    shown = deficit_streams("VA", "VA", "any", 0, row["id"])
    out = run(loop, row)
    main, twin = server.calls
    tok = processor.tokenizer
    assert ('Subtitles: ""' in tok.decode(main["prompt_ids"])) == (view is not None)  # the S slot of a blank view
    assert twin["prompt_ids"] == main["prompt_ids"]  # placeholders stay: same tokens, same positions
    key = "audio_data" if shown == "V" else "video_data"
    kept = "video_data" if shown == "V" else "audio_data"
    assert all(x.shape == y.shape and not y.any() and x.any() for x, y in zip(main[key], twin[key], strict=True))
    assert same(main[kept], twin[kept])
    assert out.extra_fields["deficit_streams"] == shown


def test_rows_without_a_media_column_keep_their_files(processor, data):
    _, cap = data
    row = next(cap[i] for i in range(len(cap)) if cap[i]["modality_tag"] == "VAS")
    requests = []
    for r in (row, {k: v for k, v in row.items() if k != "media"}):
        loop, server = make_loop(processor, data, "modality_agent", {"enable": True, "negatives": "per_response"})
        run(loop, r)
        requests.append(server.calls[1])
    assert_same_request(*requests)
    assert requests[0]["video_data"] is not None or requests[0]["audio_data"] is not None


def test_per_prompt_shares_one_deficit_response_per_group(processor, data):
    _, cap = data
    row = next(cap[i] for i in range(len(cap)) if cap[i]["modality_tag"] == "VAS")
    server_calls = {}
    for negatives in ("per_prompt", "per_response"):
        uid = uuid4().hex
        calls = 0
        texts = []
        for session in range(3):  # the n rollouts of one prompt group
            loop, server = make_loop(processor, data, "modality_agent", {"enable": True, "negatives": negatives})
            out = run(loop, {**row, "uid": uid, "session_id": session})
            calls += len(server.calls)
            texts.append(out.extra_fields["deficit_response"])
        server_calls[negatives] = calls
        assert texts == [DEFICIT_TEXT] * 3
    assert server_calls == {"per_prompt": 3 + 1, "per_response": 3 + 3}


def test_deficit_response_is_cut_to_the_response_length(processor, data):
    _, cap = data
    row = next(cap[i] for i in range(len(cap)) if cap[i]["modality_tag"] == "VA")
    loop, _ = make_loop(processor, data, "modality_agent", {"enable": True}, response_length=2)
    out = run(loop, row)
    tok = processor.tokenizer
    assert out.extra_fields["deficit_response"] == tok.decode(tok.encode(DEFICIT_TEXT)[:2], skip_special_tokens=True)


def test_a_caption_row_without_schema_columns_fails_loudly(processor, data):
    _, cap = data
    row = dict(next(cap[i] for i in range(len(cap)) if cap[i]["modality_tag"] == "VS"))
    del row["media_streams"]
    loop, _ = make_loop(processor, data, "modality_agent", {"enable": True})
    with pytest.raises(ValueError, match="media_streams"):
        run(loop, row)
