"""Per-tag flow in training: tags to the estimator's batch context, ``mapo/*``, ``pg_var/*`` and ``streams/*``."""

import numpy as np
import pytest
import torch
from memory_store import MemoryStore
from omegaconf import OmegaConf

from verl_modality.algorithms.batch_context import current_batch_context
from verl_modality.algorithms.gradient_variance import pg_variance_metrics
from verl_modality.models.omni import load_omni_processor, placeholder_token_ids
from verl_modality.trainer.features import tag_flow as tf


def _cfg(est="mapo_stratified", **mapo):
    return OmegaConf.create({"algorithm": {"adv_estimator": est, **({"mapo": mapo} if mapo else {})}})


def test_gating_on_estimator_name():
    assert tf.uses_mapo(_cfg()) and tf.wants_tag_metrics(_cfg())
    assert not tf.uses_mapo(_cfg("grpo")) and not tf.wants_tag_metrics(_cfg("grpo"))
    assert tf.wants_tag_metrics(_cfg("grpo", tag_metrics=True)) and not tf.uses_mapo(_cfg("grpo", tag_metrics=True))
    assert tf.TagFlow(_cfg("grpo")).labels == [] and tf.TagFlow(_cfg()).labels == ["mapo_stratified", "per-tag metrics"]
    with pytest.raises(ValueError, match="algorithm.mapo"):
        tf.TagFlow(_cfg(no_such_option=1))  # read when the trainer is built


def test_stats_to_metrics_names():
    flat = tf.stats_to_metrics({"VA": {"weight": 0.5, "count": 8}, "S": {"weight": 1}})
    assert flat == {"mapo/VA/weight": 0.5, "mapo/VA/count": 8.0, "mapo/S/weight": 1.0}


def test_stream_token_metrics_by_hand():
    audio, video, pad = 7, 9, -1
    ids = np.array([[pad, 1, 7, 7, 2], [9, 9, 9, 1, 2], [pad, pad, 7, 9, 2]])
    m = tf.stream_token_metrics(["A", "V", "A"], ids, ids != pad, audio, video)
    assert m == {
        "streams/A/prompt_tokens": (4 + 3) / 2,
        "streams/A/audio_tokens": (2 + 1) / 2,
        "streams/A/video_tokens": (0 + 1) / 2,
        "streams/V/prompt_tokens": 5.0,
        "streams/V/audio_tokens": 0.0,
        "streams/V/video_tokens": 3.0,
    }
    with pytest.raises(ValueError, match="2 tags"):
        tf.stream_token_metrics(["A", "V"], ids, ids != pad, audio, video)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_omni_processor(str(tiny_model_dir)).tokenizer


def _step(tokenizer, with_padding=True):
    ids = placeholder_token_ids(tokenizer)
    a, v = ids["audio"], ids["video"]
    rows = [
        ("V", [v, v, 5], [0.0, 1.0]),
        ("V", [v, v, 5], [0.0, 0.0]),
        ("A", [a, a, a, 6], [1.0]),
        ("A", [a, 6], [0.0, 0.0, 1.0]),
        ("VA", [v, a, 5, 6], [0.0]),  # verl's padding row: left out of every metric
    ][: 5 if with_padding else 4]
    store = MemoryStore()
    batch = store.add(
        "train",
        [{"modality_tag": t, "prompts": torch.tensor(p), "rm_scores": torch.tensor(s)} for t, p, s in rows],
        tags=[{}, {}, {}, {}, {"is_padding": True}][: len(rows)],
    )
    return store, batch


def test_read_gives_tags_padding_flags_and_prompts(tokenizer):
    store, batch = _step(tokenizer)
    step = tf.TagFlow(_cfg()).read(store, batch, tokenizer)
    assert step.tags == ["V", "V", "A", "A", "VA"] and step.valid.tolist() == [True, True, True, True, False]
    assert [p.tolist()[-1] for p in step.prompts.unbind()] == [5, 5, 6, 6, 6]
    assert tf.TagFlow(_cfg("grpo")).read(store, batch, tokenizer).prompts is None  # nothing counted, nothing read
    empty = MemoryStore()
    batch = empty.add("train", [{"prompts": torch.tensor([1])}])
    with pytest.raises(KeyError, match="modality_tag"):
        tf.TagFlow(_cfg()).read(empty, batch, tokenizer)


def test_step_metrics_by_hand(tokenizer):
    store, batch = _step(tokenizer)
    flow = tf.TagFlow(_cfg())
    step = flow.read(store, batch, tokenizer)
    m = flow.step_metrics(store, batch, step, tokenizer)
    assert m["streams/V/video_tokens"] == 2.0 and m["streams/V/audio_tokens"] == 0.0
    assert m["streams/A/audio_tokens"] == 2.0 and m["streams/A/prompt_tokens"] == 3.0
    assert "streams/VA/prompt_tokens" not in m
    scores = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    want = pg_variance_metrics(scores, step.tags, np.array([True, True, True, True, False]))
    assert {k: v for k, v in m.items() if k.startswith("pg_var/")} == want and want
    assert tf.TagFlow(_cfg("grpo")).step_metrics(store, batch, step, tokenizer) == {}


def test_advantage_context_hands_tags_and_one_history_to_the_estimator(tokenizer):
    store, batch = _step(tokenizer, with_padding=False)
    flow = tf.TagFlow(_cfg(history_window=None))
    step = flow.read(store, batch, tokenizer)
    metrics = {}
    with flow.advantage_context(step, 3, 12, metrics) as ctx:
        assert current_batch_context() is ctx
        assert list(ctx.modality_tags) == step.tags and ctx.step == 3
        ctx.stats["V"] = {"weight": 0.5}  # what the estimator writes
    assert current_batch_context() is None and metrics == {"mapo/V/weight": 0.5}
    with flow.advantage_context(step, 4, 12, {}) as again:
        assert again.state is ctx.state  # one adaptive-weight history for the run
    assert ctx.state.window == 12  # history_window unset: one epoch of steps (MAPLE App. E)
    with tf.TagFlow(_cfg("grpo")).advantage_context(step, 3, 12, metrics) as none:
        assert none is None and current_batch_context() is None
