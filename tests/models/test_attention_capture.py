"""Audio attention mass from captured q/k on the tiny Qwen2.5-Omni thinker, against eager attention probabilities."""

import numpy as np
import pytest
import torch

from verl_modality.algorithms.attention_loss import attention_loss
from verl_modality.algorithms.audio_mass import reduce_heads_layers
from verl_modality.models.attention_capture import AudioAttentionCapture, audio_key_mask_from_ids, response_audio_mass
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
