"""The transformers-generate rollout core, in-process, on each family's tiny thinker with audio and video."""

import numpy as np
import pytest
import torch

from verl_modality.models.hf_generator import HFGenerator
from verl_modality.models.omni import compute_position_ids
from verl_modality.models.omni_inputs import encode_prompt

SAMPLING = {"temperature": 0.9, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}
GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": -1}


@pytest.fixture(scope="module")
def gen(family_model_dir):
    return HFGenerator(family_model_dir[1], prompt_length=512, response_length=6, seed=0)


@pytest.fixture(scope="module")
def media():
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(32000) * 0.1).astype(np.float32)
    video = rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    return audio, video


def _prompt(gen, media, text="Which animal? [A] dog [B] cat"):
    audio, video = media
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "audio"}, {"type": "text", "text": text}]}]
    return encode_prompt(gen.processor, messages, videos=[video], audios=[audio])


def test_rollout_log_probs_match_a_teacher_forced_forward(gen, media):
    enc = _prompt(gen, media)
    ids = enc.input_ids.tolist()
    audio, video = media
    out = gen.generate(ids, SAMPLING, video_data=[video], audio_data=[audio])
    assert 1 <= len(out["token_ids"]) <= 6 and len(out["log_probs"]) == len(out["token_ids"])
    full = torch.tensor([ids + out["token_ids"]])
    mask = torch.ones_like(full)
    pos = compute_position_ids(gen.processor, full[0], mask[0], enc.multi_modal_inputs)
    with torch.no_grad():
        logits = gen.model(input_ids=full, attention_mask=mask, position_ids=pos.unsqueeze(1), **enc.multi_modal_inputs)
    logits = logits.logits[0, len(ids) - 1 : -1] / SAMPLING["temperature"]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(out["token_ids"])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(out["log_probs"]), expected, atol=1e-4)


def test_audio_reaches_the_model(gen, media):
    audio, video = media
    enc = _prompt(gen, media)
    ids = enc.input_ids.tolist()
    with torch.no_grad():
        loud = gen.model(**gen.model_inputs(ids, videos=[video], audios=[audio])).logits[0, -1]
        silent = gen.model(**gen.model_inputs(ids, videos=[video], audios=[np.zeros_like(audio)])).logits[0, -1]
    assert not torch.allclose(loud, silent)  # same token ids, different audio features


def test_rebuilt_prompt_must_match(gen, media):
    audio, video = media
    ids = _prompt(gen, media).input_ids.tolist()
    short_audio = audio[:8000]  # fewer audio frames -> fewer placeholder tokens than the prompt has
    with pytest.raises(ValueError, match="placeholder expansion differs"):
        gen.model_inputs(ids, videos=[video], audios=[short_audio])


def test_sampling_is_reproducible_and_order_independent(tiny_model_dir, media):
    audio, video = media
    a = HFGenerator(tiny_model_dir, prompt_length=512, response_length=6, seed=3)
    b = HFGenerator(tiny_model_dir, prompt_length=512, response_length=6, seed=3, processor=a.processor)
    p1 = _prompt(a, media, "first question").input_ids.tolist()
    p2 = _prompt(a, media, "second question").input_ids.tolist()
    kw = {"video_data": [video], "audio_data": [audio]}
    run_a = [a.generate(p, SAMPLING, **kw)["token_ids"] for p in (p1, p1, p2, p2)]
    run_b = [b.generate(p, SAMPLING, **kw)["token_ids"] for p in (p2, p1, p2, p1)]
    assert sorted(run_a[:2]) == sorted([run_b[1], run_b[3]])  # the group of p1: same set of responses
    assert sorted(run_a[2:]) == sorted([run_b[0], run_b[2]])
    assert run_a[0] != run_a[1]  # the n identical requests of a group get different samples
    # a new weight version starts a new sample sequence
    a.set_weight_version(1)
    assert a.generate(p1, SAMPLING, **kw)["token_ids"] != run_a[0]


def test_replicas_give_one_groups_requests_distinct_samples(tiny_model_dir, media):
    """World size 2: verl's load balancer may send two requests of one group to two replicas, each counting its own
    occurrences; the replica's rank keeps their seeds apart (replica 0 keeps the one-replica seeds)."""
    audio, video = media
    one = HFGenerator(tiny_model_dir, prompt_length=512, response_length=6, seed=3)
    r0 = HFGenerator(tiny_model_dir, prompt_length=512, response_length=6, seed=3, processor=one.processor, replica=0)
    r1 = HFGenerator(tiny_model_dir, prompt_length=512, response_length=6, seed=3, processor=one.processor, replica=1)
    ids = _prompt(one, media, "first question").input_ids.tolist()
    first = [g.request_seed(ids, b"media") for g in (one, r0, r1)]  # each generator's first such request
    assert first[0] == first[1] != first[2]
    kw = {"video_data": [video], "audio_data": [audio]}
    assert r0.generate(ids, SAMPLING, **kw)["token_ids"] != r1.generate(ids, SAMPLING, **kw)["token_ids"]


def test_greedy_and_budget(gen, media):
    audio, video = media
    ids = _prompt(gen, media).input_ids.tolist()
    one = gen.generate(ids, GREEDY, video_data=[video], audio_data=[audio])
    two = gen.generate(ids, GREEDY, video_data=[video], audio_data=[audio])
    assert one["token_ids"] == two["token_ids"]
    banned = set(gen.suppress_ids)
    assert banned and not banned & set(one["token_ids"])
    assert gen.max_new_tokens(len(ids), {}) == 6
    assert gen.max_new_tokens(512 + 2, {}) == 4  # prompt + response must fit prompt_length + response_length
    with pytest.raises(ValueError, match="no room"):
        gen.max_new_tokens(512 + 6, {})


def test_a_response_cut_at_the_budget_is_reported_as_clipped_one_ending_in_eos_is_not(gen, media, monkeypatch):
    audio, video = media
    ids = _prompt(gen, media).input_ids.tolist()
    kw = {"video_data": [video], "audio_data": [audio]}
    clipped = gen.generate(ids, GREEDY, **kw)
    tokens = clipped["token_ids"]
    assert len(tokens) == 6 and not set(tokens) & set(gen.eos_token_ids)  # the budget ran out (response_length 6)
    assert (clipped["finish_reason"], clipped["stop_reason"]) == ("length", "length")
    short = gen.generate(ids, {**GREEDY, "max_tokens": 2}, **kw)  # a request's own max_tokens is a budget too
    assert short["token_ids"] == tokens[:2] and short["stop_reason"] == "length"
    # the same greedy response with its last token made the EOS: it ends there, within (or exactly at) the budget
    monkeypatch.setattr(gen, "eos_token_ids", [tokens[-1]])
    ended = gen.generate(ids, GREEDY, **kw)
    assert ended["token_ids"] == tokens[: tokens.index(tokens[-1]) + 1]
    assert (ended["finish_reason"], ended["stop_reason"]) == ("stop", "completed")


def test_the_server_hands_verl_the_stop_reason(gen, media):
    import asyncio

    from verl_modality.rollout.hf_rollout import HFServer

    audio, video = media
    server = object.__new__(HFServer)  # the Ray actor's body, without Ray
    server.generator, server._lock = gen, asyncio.Lock()
    ids = _prompt(gen, media).input_ids.tolist()
    out = asyncio.run(server.generate("r0", ids, GREEDY, video_data=[video], audio_data=[audio]))
    assert out.stop_reason == "length" and len(out.token_ids) == 6


def test_weight_updates_load_exactly(family_model_dir, media):
    from verl.workers.engine.fsdp.utils import unfuse_moe_params

    g = HFGenerator(family_model_dir[1], prompt_length=512, response_length=4, seed=0)
    state = {k: v.clone() + 0.01 for k, v in g.model.state_dict().items() if v.is_floating_point()}
    # What verl's FSDP engine sends: MoE experts split one by one (a no-op for dense models).
    sent = dict(unfuse_moe_params(state.items(), g.model.config.model_type))
    assert g.load_weights(sent, version=7) == len(sent)
    assert g.weight_version == 7
    loaded = g.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="unexpected"):
        g.load_weights({"thinker.model.norm.weight": torch.zeros(1)}, version=8)
    with pytest.raises(ValueError, match="missing"):
        g.load_weights({}, version=8)


def test_lora_adapters_are_served_as_the_peft_model_computes(family_model_dir):
    """What verl sends under unmerged LoRA: the base weights under PEFT's names (``.base_layer``), then at every sync
    only the adapters. The served model's logits equal the PEFT model's, after each of two adapter syncs (the
    second merges onto the base, not onto the first merge)."""
    from peft import LoraConfig, get_peft_model

    from verl_modality.models.lora import ENCODERS, LANGUAGE_MODEL_LINEAR, is_adapter_name
    from verl_modality.models.omni import load_thinker
    from verl_modality.rollout.hf_rollout import sync_payload

    g = HFGenerator(family_model_dir[1], prompt_length=512, response_length=4, seed=0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LINEAR, exclude_modules=ENCODERS)
    peft = get_peft_model(load_thinker(family_model_dir[1]), config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a different base than the served model's, so the base sync must land
        for name, p in peft.named_parameters():
            if ".base_layer." in name or ("lora_" not in name and p.dim() == 2):
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    from verl.workers.engine.fsdp.utils import unfuse_moe_params

    base = {k.removeprefix("base_model.model."): v for k, v in peft.state_dict().items() if "lora_" not in k}
    assert any(".base_layer." in k for k in base)
    state, adapter_config = sync_payload(iter(base.items()), config.to_dict(), base_sync_done=False)
    assert adapter_config is None and not any(".base_layer." in k for k in state)
    g.load_weights(dict(unfuse_moe_params(state.items(), g.model.config.model_type)), version=1)
    ids = torch.randint(0, 1000, (2, 16), generator=gen)
    for version in (2, 3):
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        lora = {k.replace(".default", ""): v for k, v in peft.state_dict().items() if is_adapter_name(k)}
        state, adapter_config = sync_payload(iter(lora.items()), config.to_dict(), base_sync_done=True)
        assert adapter_config["r"] == 4 and set(state) == set(lora)
        assert g.load_adapter(state, adapter_config, version) == len(lora) // 2
        assert g.weight_version == version
        with torch.no_grad():
            want = peft(input_ids=ids).logits
            got = g.model(input_ids=ids).logits
        assert (want - got).abs().max() < 1e-4, (version, (want - got).abs().max())


def test_registered_with_verl():
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    assert _ROLLOUT_REGISTRY[("hf", "async")] == "verl_modality.rollout.hf_rollout.HFServerAdapter"
    replica = RolloutReplicaRegistry.get("hf")
    assert replica.__name__ == "HFReplica" and not replica.rollout_worker_use_gpu(object.__new__(replica))
    from verl.workers.rollout.base import BaseRollout

    from verl_modality.rollout.hf_rollout import HFServerAdapter

    assert issubclass(HFServerAdapter, BaseRollout)


def test_unsupported_settings_are_refused_before_any_work():
    from types import SimpleNamespace

    from verl_modality.rollout.hf_rollout import check_supported

    naive = SimpleNamespace(checkpoint_engine=SimpleNamespace(backend="naive"))
    check_supported(naive, SimpleNamespace(lora_rank=0, lora={}, lora_adapter_path=None))
    check_supported(naive, SimpleNamespace(lora_rank=8, lora={}, lora_adapter_path="/a"))  # adapters are served
    with pytest.raises(ValueError, match="checkpoint_engine.backend='nccl'"):
        check_supported(SimpleNamespace(checkpoint_engine=SimpleNamespace(backend="nccl")), {})
