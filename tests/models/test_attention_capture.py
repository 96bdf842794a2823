"""Audio attention mass from captured q/k on the tiny Omni thinkers (also under LoRA), against eager attention
probabilities."""

import numpy as np
import pytest
import torch

from verl_modality.algorithms.attention_loss import attention_loss
from verl_modality.algorithms.audio_mass import reduce_heads_layers
from verl_modality.models.attention_capture import (
    AudioAttentionCapture,
    audio_key_mask_from_ids,
    decoder_layers,
    response_audio_mass,
)
from verl_modality.models.lora import LANGUAGE_MODEL_LINEAR
from verl_modality.models.omni import load_omni_processor, load_thinker, placeholder_token_ids
from verl_modality.models.omni_inputs import build_actor_batch, encode_prompt


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    processor = load_omni_processor(str(tiny_model_dir))
    tok = processor.tokenizer
    audio = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)  # 1 s
    prompts = []
    for text in ("Which animal makes this sound?", "How many beeps?"):
        messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": text}]}]
        prompts.append(encode_prompt(processor, messages, audios=[audio]))
    responses = [tok.encode("The dog barks three times."), tok.encode("I hear two beeps.")]
    batch = build_actor_batch(processor, prompts, responses, pad_token_id=tok.pad_token_id)
    mm = {
        key: torch.cat([row[key] for row in batch["multi_modal_inputs"]], dim=0)
        for key in batch["multi_modal_inputs"][0]
    }
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"].transpose(0, 1).contiguous(),  # (4, B, L)
        **mm,
    }
    return {"processor": processor, "batch": batch, "inputs": inputs, "audio_id": placeholder_token_ids(tok)["audio"]}


def _eager_mass(attn: torch.Tensor, audio: torch.Tensor, r: int) -> torch.Tensor:
    """(B, H, R): mass of the predicting positions L-R-1 .. L-2 on the audio keys, from (B, H, L, L) probabilities."""
    length = attn.shape[-1]
    probs = attn[:, :, length - r - 1 : length - 1]
    return (probs * audio[:, None, None, :].float()).sum(-1)


def test_captured_mass_equals_eager_attention_probabilities(tiny_model_dir, setup):
    inputs, batch = setup["inputs"], setup["batch"]
    audio = audio_key_mask_from_ids(inputs["input_ids"], setup["audio_id"])
    assert int(audio.sum()) >= 2 * 10  # real placeholders from the processor, in both rows
    r = batch["responses"].shape[1]
    eager = load_thinker(tiny_model_dir, attn_implementation="eager").eval()
    sdpa = load_thinker(tiny_model_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():
        with AudioAttentionCapture(eager, layers=[0, 1]) as cap_eager:
            out = eager(**inputs, output_attentions=True)
        with AudioAttentionCapture(sdpa) as cap_sdpa:  # default: the last three (here: both) layers
            sdpa_logits = sdpa(**inputs).logits
        plain_logits = sdpa(**inputs).logits
    assert cap_sdpa.layers == [0, 1]
    assert torch.equal(sdpa_logits, plain_logits)  # the hooks leave the forward unchanged
    mask = inputs["attention_mask"]
    real = mask.bool()
    assert torch.allclose(out.logits[real], sdpa_logits[real], atol=1e-4)
    for cap in (cap_eager, cap_sdpa):
        masses = cap.audio_mass(audio, response_length=r, attention_mask=mask, query_chunk=3)
        for layer, mass in zip(cap.layers, masses, strict=True):
            expected = _eager_mass(out.attentions[layer], audio, r)
            heads = eager.config.text_config.num_attention_heads
            assert mass.shape == expected.shape == (2, heads, r)
            assert torch.allclose(mass, expected, atol=1e-5), (layer, (mass - expected).abs().max())
            assert float(mass.min()) > 0.0 and float(mass.max()) < 1.0
    naive = cap_sdpa.audio_mass(audio, response_length=r, attention_mask=mask, naive=True)
    chunked = cap_sdpa.audio_mass(audio, response_length=r, attention_mask=mask)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(naive, chunked, strict=True))
    # the token's own query instead of the predicting one
    own = cap_eager.audio_mass(audio, response_length=r, attention_mask=mask, predictive=False)[1]
    length = mask.shape[1]
    expected = (out.attentions[1][:, :, length - r :] * audio[:, None, None, :].float()).sum(-1)
    assert torch.allclose(own, expected, atol=1e-5)


def test_attention_loss_backpropagates_into_the_chosen_layers(tiny_model_dir, setup):
    inputs, batch = setup["inputs"], setup["batch"]
    model = load_thinker(tiny_model_dir, attn_implementation="sdpa").train()
    r = batch["responses"].shape[1]
    with AudioAttentionCapture(model, layers=[-1]) as cap:
        model(**inputs)
    a = response_audio_mass(cap, inputs["input_ids"], setup["audio_id"], r, attention_mask=inputs["attention_mask"])
    assert a.shape == (2, r)
    mask = batch["response_mask"]
    g = torch.Generator().manual_seed(0)
    dh = torch.randn((2, r), generator=g)
    loss, metrics = attention_loss(a, mask, mask.bool(), dh, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))
    assert loss.item() > 0 and np.isfinite(metrics["attn/audio_mass_first_third"])
    loss.backward()
    attn = model.model.layers[1].self_attn
    for proj in (attn.q_proj, attn.k_proj):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert model.model.layers[1].self_attn.v_proj.weight.grad is None  # the mass does not depend on values
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0  # reaches earlier layers too
    assert reduce_heads_layers(cap.audio_mass(audio_key_mask_from_ids(inputs["input_ids"], setup["audio_id"]), r))[
        0
    ].shape == (r,)


# -- LoRA (PEFT) on the thinker: the capture sees the adapted q/k projections --------------------------------------


def _family_inputs(model_dir) -> dict:
    """Model inputs, audio mask and response length of a two-row batch, for either family's tiny checkpoint."""
    processor = load_omni_processor(str(model_dir))
    tok = processor.tokenizer
    audio = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)  # 1 s
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is this?"}]}]
    prompts = [encode_prompt(processor, messages, audios=[audio]) for _ in range(2)]
    responses = [tok.encode("A dog barks."), tok.encode("Two beeps.")]
    batch = build_actor_batch(processor, prompts, responses, pad_token_id=tok.pad_token_id)
    mm = {key: torch.cat([row[key] for row in batch["multi_modal_inputs"]]) for key in batch["multi_modal_inputs"][0]}
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": batch["position_ids"].transpose(0, 1).contiguous(),
        **mm,
    }
    audio_mask = audio_key_mask_from_ids(batch["input_ids"], placeholder_token_ids(tok)["audio"])
    return {"inputs": inputs, "audio": audio_mask, "r": batch["responses"].shape[1], "batch": batch}


@pytest.fixture(scope="module")
def lora_setup(family_model_dir):
    name, model_dir = family_model_dir
    return {"name": name, "model_dir": model_dir, **_family_inputs(model_dir)}


def _with_lora(model: torch.nn.Module, seed: int = 0):
    """verl's LoRA wrapping (PEFT, the plugin's thinker target) with seeded non-zero ``lora_B``: PEFT starts B at
    zero, where the adapted model equals the base one and a capture that skipped the adapters would pass."""
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(seed)  # lora_A's init
    peft_model = get_peft_model(
        model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, target_modules=LANGUAGE_MODEL_LINEAR)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)
    return peft_model


def test_captured_mass_under_lora_is_the_adapted_models(lora_setup):
    """Given the PeftModel verl's engine holds, the capture recomputes q/k through the LoRA-adapted projections: its
    mass equals the adapted model's eager attention probabilities (eager and sdpa alike), not the base model's."""
    inputs, audio, r, model_dir = lora_setup["inputs"], lora_setup["audio"], lora_setup["r"], lora_setup["model_dir"]
    mask = inputs["attention_mask"]
    with torch.no_grad():
        base = load_thinker(model_dir, attn_implementation="eager").eval()(**inputs, output_attentions=True)
    eager = _with_lora(load_thinker(model_dir, attn_implementation="eager").eval())
    sdpa = _with_lora(load_thinker(model_dir, attn_implementation="sdpa").eval(), seed=1)
    sdpa.load_state_dict(eager.state_dict())  # the same adapters
    layers = decoder_layers(eager)
    assert layers is decoder_layers(eager.get_base_model()) is eager.base_model.model.model.layers
    assert type(layers[-1].self_attn.q_proj).__module__.startswith("peft.")  # a LoRA module, not the base Linear
    with torch.no_grad():
        with AudioAttentionCapture(eager) as cap_eager:
            adapted = eager(**inputs, output_attentions=True)
        with AudioAttentionCapture(sdpa) as cap_sdpa:
            sdpa(**inputs)
    assert cap_eager.layers == cap_sdpa.layers == [0, 1]
    for cap in (cap_eager, cap_sdpa):
        masses = cap.audio_mass(audio, response_length=r, attention_mask=mask)
        for layer, mass in zip(cap.layers, masses, strict=True):
            expected = _eager_mass(adapted.attentions[layer], audio, r)
            assert torch.allclose(mass, expected, atol=1e-5), (layer, (mass - expected).abs().max())
            assert (mass - _eager_mass(base.attentions[layer], audio, r)).abs().max() > 1e-2  # the adapters act


def test_attention_loss_under_lora_reaches_the_query_key_adapters(lora_setup):
    """L_attn's gradient reaches the chosen layer's q_proj/k_proj adapters (A and B), not its v_proj/o_proj adapters
    (the mass does not depend on values), and no frozen base weight."""
    inputs, r, batch = lora_setup["inputs"], lora_setup["r"], lora_setup["batch"]
    model = _with_lora(load_thinker(lora_setup["model_dir"], attn_implementation="sdpa").train())
    with AudioAttentionCapture(model, layers=[-1]) as cap:
        model(**inputs)
    assert cap.layers == [1]
    a = reduce_heads_layers(
        cap.audio_mass(lora_setup["audio"], response_length=r, attention_mask=inputs["attention_mask"])
    )
    mask = batch["response_mask"]
    dh = torch.randn((2, r), generator=torch.Generator().manual_seed(0))
    loss, _ = attention_loss(a, mask, mask.bool(), dh, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))
    loss.backward()
    attn = decoder_layers(model)[1].self_attn
    for proj in (attn.q_proj, attn.k_proj):
        for part in (proj.lora_A["default"], proj.lora_B["default"]):
            assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0
        assert not proj.base_layer.weight.requires_grad and proj.base_layer.weight.grad is None
    for proj in (attn.v_proj, attn.o_proj):
        assert proj.lora_A["default"].weight.grad is None and proj.lora_B["default"].weight.grad is None
    earlier = decoder_layers(model)[0].self_attn.q_proj.lora_B["default"].weight
    assert earlier.grad is not None and earlier.grad.abs().sum() > 0  # through the hidden states into layer 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert all(".lora_" in n for n, p in model.named_parameters() if p.grad is not None)
