"""Every patch of the integration registry leaves vanilla verl alone: for each one, a non-Omni model and unselected
options reach verl's original code.

The test walks the registry: a patch without a probe here fails :func:`test_every_patch_has_a_probe`. A probe checks
(where the target imports here) that the installed attribute wraps verl's own function, and that the wrapper, given a
spy in place of verl's function, hands a non-Omni / unselected call to it unchanged and returns its result as is.
``cpu`` and ``vllm_cpu`` entries instead must not apply without ``VERL_PLATFORM=cpu``.
"""

import asyncio
import importlib
import logging
import types

import pytest
import torch

from verl_modality.integrations import registry
from verl_modality.integrations.registry import INTEGRATIONS


class Spy:
    """Stands in for verl's function: records its calls, returns a sentinel."""

    def __init__(self, result=None):
        self.calls = []
        self.result = object() if result is None else result

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


def _wraps_verl(module_name: str, attr_path: str, qualname: str | None = None) -> None:
    """The installed ``module.attr_path`` is our wrapper around verl's function of that name."""
    module = importlib.import_module(module_name)
    obj = module
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    assert getattr(obj, "__verl_modality__", False), f"{module_name}.{attr_path} is not our wrapper"
    original = obj.__wrapped__
    assert not getattr(original, "__verl_modality__", False)
    assert original.__module__.startswith(module_name.rsplit(".", 1)[0].split(".")[0])  # verl's (or its base's)
    assert original.__qualname__ == (qualname or attr_path)


def _importable(module_name: str) -> bool:
    try:
        importlib.import_module(module_name)
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# one probe per patch


def probe_talker_log_filter():
    from verl_modality.integrations.transformers_logging import TalkerTokenIdFilter

    importlib.import_module("transformers.configuration_utils")  # transformers imports it lazily; the hook then runs
    log = logging.getLogger("transformers.configuration_utils")
    (flt,) = [f for f in log.filters if isinstance(f, TalkerTokenIdFilter)]

    def record(msg):
        return logging.LogRecord(log.name, logging.WARNING, __file__, 1, msg, None, None)

    assert flt.filter(record("Model config: pad_token_id must be `None` or an integer within the vocabulary"))
    assert flt.filter(record("any other warning"))
    assert not flt.filter(
        record("Model config: tts_text_start_token_id must be `None` or an integer within the vocabulary (x)")
    )


def probe_hf_processor(tmp_path):
    from transformers import Qwen2Config

    from verl_modality.integrations.verl_utils import omni_hf_processor

    _wraps_verl("verl.utils.tokenizer", "hf_processor")
    Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    spy = Spy()
    wrapped = omni_hf_processor(spy)
    for path in (str(tmp_path), str(tmp_path / "no-such-dir")):  # a non-Omni model; something AutoConfig cannot read
        assert wrapped(path, trust_remote_code=False) is spy.result
        assert spy.calls[-1] == ((path,), {"trust_remote_code": False})


def probe_hf_model_config():
    from verl_modality.integrations.verl_workers import thinker_post_init

    _wraps_verl("verl.workers.config.model", "HFModelConfig.__post_init__")
    spy = Spy()
    cfg = types.SimpleNamespace(hf_config=types.SimpleNamespace(model_type="qwen2"), path="x")
    before = dict(vars(cfg))
    thinker_post_init(spy)(cfg)
    assert spy.calls == [((cfg,), {})] and vars(cfg) == before  # nothing set on a non-Omni config


def probe_fsdp_build_module():
    from verl_modality.integrations.verl_workers import leaf_layer_build_module

    _wraps_verl("verl.workers.engine.fsdp.transformer_impl", "FSDPEngine._build_module")
    built = types.SimpleNamespace(config=types.SimpleNamespace(model_type="qwen2"))
    spy = Spy(result=built)
    engine = object()
    assert leaf_layer_build_module(spy)(engine) is built
    assert spy.calls == [((engine,), {})] and not hasattr(built, "_no_split_modules")
    assert not hasattr(built, "forward")  # no encoder lockstep either


def probe_position_id_fix():
    from tensordict import TensorDict

    from verl_modality.integrations.verl_utils import fixed_3d_position_ids

    _wraps_verl("verl.utils.tensordict_utils", "maybe_fix_3d_position_ids")
    spy = Spy()
    fixed = fixed_3d_position_ids(spy)
    for data in (TensorDict({}, batch_size=[]), TensorDict({"position_ids": torch.arange(6).view(2, 3)}, [2])):
        assert fixed(data) is spy.result and spy.calls[-1] == ((data,), {})  # no position ids; a plain (bs, L) tensor


def _probe_rebound(module_name):
    def probe():
        from verl.utils import tensordict_utils

        module = importlib.import_module(module_name)
        if hasattr(module, "maybe_fix_3d_position_ids"):  # the same (verified) wrapper as verl's tensordict_utils
            assert module.maybe_fix_3d_position_ids is tensordict_utils.maybe_fix_3d_position_ids

    return probe


def probe_vllm_server():
    from verl_modality.integrations.verl_rollout import patch_vllm_server

    target = "verl.workers.rollout.vllm_rollout.vllm_async_server"
    if _importable(target):
        _wraps_verl(target, "qwen2_5_vl_dedup_image_tokens")
        _wraps_verl(target, "get_vision_placeholder_token_ids")
    dedup, banned = Spy(), Spy()
    fake = types.SimpleNamespace(qwen2_5_vl_dedup_image_tokens=dedup, get_vision_placeholder_token_ids=banned)
    patch_vllm_server(fake)
    processor = types.SimpleNamespace()  # a processor the Omni support did not configure
    assert fake.qwen2_5_vl_dedup_image_tokens([1, 2, 2], processor) is dedup.result
    assert fake.get_vision_placeholder_token_ids(processor) is banned.result
    assert dedup.calls == [(([1, 2, 2], processor), {})] and banned.calls == [((processor,), {})]


def probe_vllm_adapter():
    from verl_modality.integrations.verl_rollout import patch_vllm_adapter

    target = "verl.workers.rollout.vllm_rollout.vllm_rollout"
    if _importable(target):
        _wraps_verl(target, "ServerAdapter.update_weights")
    seen = []

    class ServerAdapter:
        async def update_weights(self, weights, *args, **kwargs):
            seen.append(weights)
            return "done"

    patch_vllm_adapter(types.SimpleNamespace(ServerAdapter=ServerAdapter))
    adapter = ServerAdapter()
    adapter.model_config = types.SimpleNamespace(hf_config=types.SimpleNamespace(model_type="qwen2"))
    weights = [("model.embed_tokens.weight", torch.zeros(1))]
    assert asyncio.run(adapter.update_weights(weights)) == "done" and seen == [weights]  # names untouched


def probe_vllm_engine_calls():
    from verl_modality.integrations.verl_rollout import record_engine_call_failures

    target = "verl.workers.rollout.vllm_rollout.vllm_async_server"
    if _importable(target):
        _wraps_verl(target, "vLLMHttpServer.collective_rpc")

    class vLLMHttpServer:  # noqa: N801 (verl's name)
        async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
            if method.startswith("boom") or method == "check_health" and args == ("fail",):
                raise RuntimeError("Worker failed")
            return ("ran", method, args)

    record_engine_call_failures(types.SimpleNamespace(vLLMHttpServer=vLLMHttpServer))
    server = vLLMHttpServer()
    assert asyncio.run(server.collective_rpc("check_health", args=(1,))) == ("ran", "check_health", (1,))
    assert asyncio.run(server.engine_call_failure()) is None  # nothing failed: nothing recorded
    with pytest.raises(RuntimeError, match="Worker failed"):  # the failure still reaches verl unchanged
        asyncio.run(server.collective_rpc("boom"))
    assert asyncio.run(server.engine_call_failure()) == "boom failed: RuntimeError: Worker failed"
    with pytest.raises(RuntimeError, match="Worker failed"):  # the watchdog's probe is not recorded
        asyncio.run(server.collective_rpc("check_health", args=("fail",)))
    assert asyncio.run(server.engine_call_failure()) == "boom failed: RuntimeError: Worker failed"


def probe_forward_step():
    from tensordict import TensorDict

    from verl_modality.integrations.verl_workers import patch_forward_step

    _wraps_verl("verl.workers.engine.fsdp.transformer_impl", "FSDPEngineWithLMHead.forward_step")
    seen = []

    class FSDPEngineWithLMHead:
        def forward_step(self, micro_batch, loss_function, forward_only):
            seen.append((micro_batch, loss_function, forward_only))
            return "out"

    patch_forward_step(types.SimpleNamespace(FSDPEngineWithLMHead=FSDPEngineWithLMHead))
    batch, loss = TensorDict({}, batch_size=[]), object()  # no MAPO-AT knob: attention loss not selected
    for forward_only in (False, True):
        assert FSDPEngineWithLMHead().forward_step(batch, loss, forward_only) == "out"
    assert seen == [(batch, loss, False), (batch, loss, True)]


def probe_forward_backward_batch():
    from tensordict import TensorDict

    from verl_modality.integrations.verl_workers import patch_forward_backward_batch

    _wraps_verl("verl.workers.engine.fsdp.transformer_impl", "FSDPEngine.forward_backward_batch")
    seen = []

    class FSDPEngine:
        def forward_backward_batch(self, data, loss_function, forward_only=False):
            seen.append((data, loss_function, forward_only))
            return ["out"]

    patch_forward_backward_batch(types.SimpleNamespace(FSDPEngine=FSDPEngine))
    batch, loss = TensorDict({}, batch_size=[]), object()  # no relevance flag: MAPO-AT not selected
    for forward_only in (False, True):
        assert FSDPEngine().forward_backward_batch(batch, loss, forward_only) == ["out"]
    assert seen == [(batch, loss, False), (batch, loss, True)] and list(batch.keys()) == []


def probe_ppo_loss():
    from tensordict import TensorDict

    from verl_modality.integrations.verl_workers import with_mapo_at

    _wraps_verl("verl.workers.engine_workers", "ppo_loss")
    loss, metrics = torch.tensor(0.5), {"actor/pg_loss": 0.5}
    spy = Spy(result=(loss, metrics))
    config, output, data = object(), object(), TensorDict({}, batch_size=[])
    out = with_mapo_at(spy)(config, output, data)
    assert out[0] is loss and out[1] is metrics and spy.calls == [((config, output, data, None), {})]


def probe_replay_buffer():
    from verl_modality.integrations.verl_trainer import patch_replay_buffer

    _wraps_verl("verl.trainer.ppo.v1.replay_buffer", "ReplayBuffer._dapo_filtered_keys")
    seen = []

    class ReplayBuffer:
        def _dapo_filtered_keys(self, partition_id):
            seen.append(partition_id)
            return {"uid"}, {1.0: 1}

    patch_replay_buffer(types.SimpleNamespace(ReplayBuffer=ReplayBuffer))
    assert ReplayBuffer()._dapo_filtered_keys("train") == ({"uid"}, {1.0: 1}) and seen == ["train"]  # no hook set


PROBES = {
    "config validation log: no warnings for the talker's thinker-vocabulary token ids": probe_talker_log_filter,
    "hf_processor: the Omni processor of the model family with multimodal RoPE": probe_hf_processor,
    "HFModelConfig: full Omni checkpoint -> thinker config": probe_hf_model_config,
    "FSDPEngine._build_module: leaf-layer FSDP wrapping for the thinker": probe_fsdp_build_module,
    "maybe_fix_3d_position_ids: repacks multimodal RoPE ids of equal-length batches": probe_position_id_fix,
    "engine base: the repacking position-id fix": _probe_rebound("verl.workers.engine.base"),
    "engine workers: the repacking position-id fix": _probe_rebound("verl.workers.engine_workers"),
    "vLLM server: Omni placeholder collapse and placeholders never sampled": probe_vllm_server,
    "vLLM server: failed engine calls recorded for the watchdog": probe_vllm_engine_calls,
    "vLLM adapter: thinker weights under full-checkpoint names": probe_vllm_adapter,
    "ReplayBuffer._dapo_filtered_keys: failed rewards neutralised before the group filter": probe_replay_buffer,
    "forward_step: MAPO-AT attention capture": probe_forward_step,
    "forward_backward_batch: MAPO-AT relevance-weight sum of the mini-batch": probe_forward_backward_batch,
    "ppo_loss: MAPO-AT relevance weights and + eta * attention loss": probe_ppo_loss,
}
ALWAYS_PATCHES = [i for i in INTEGRATIONS if i.kind == "patch" and i.when == "always"]
PLATFORM_ENTRIES = [i for i in INTEGRATIONS if i.when != "always"]


def test_every_patch_has_a_probe():
    assert sorted(PROBES) == sorted(i.name for i in ALWAYS_PATCHES)


@pytest.mark.parametrize("item", ALWAYS_PATCHES, ids=lambda i: i.name[:40])
def test_patch_hands_vanilla_calls_to_verl(item, tmp_path):
    import verl  # noqa: F401  (loads the plugin, which installs the patches)

    probe = PROBES[item.name]
    probe(tmp_path) if "tmp_path" in probe.__code__.co_varnames[: probe.__code__.co_argcount] else probe()


@pytest.mark.parametrize("item", PLATFORM_ENTRIES, ids=lambda i: i.name[:40])
def test_platform_entries_do_not_apply_without_the_cpu_platform(item, monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    assert not registry.applies_here(item)
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    if item.when == "cpu":
        assert registry.applies_here(item)
