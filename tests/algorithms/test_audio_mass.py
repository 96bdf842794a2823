"""Audio attention mass: the chunked, recomputing one against the materialised softmax, values and gradients."""

import pytest
import torch

from verl_modality.algorithms.audio_mass import audio_attention_mass, naive_audio_attention_mass, reduce_heads_layers


def _case(b, h, hk, tq, tk, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn((b, h, tq, d), generator=g, dtype=dtype).requires_grad_()
    k = torch.randn((b, hk, tk, d), generator=g, dtype=dtype).requires_grad_()
    audio = torch.rand((b, tk), generator=g) < 0.3
    return q, k, audio


@pytest.mark.parametrize(
    ("b", "h", "hk", "tq", "tk", "chunk", "causal"),
    [
        (2, 4, 4, 6, 6, 4, True),  # MHA, queries = keys
        (2, 4, 2, 5, 11, 2, True),  # GQA, causal offset (queries are the last 5 of 11 positions)
        (1, 6, 1, 7, 9, 3, False),  # MQA, no causal mask
        (3, 2, 2, 4, 4, 256, True),  # one chunk
    ],
)
def test_chunked_equals_naive_values_and_gradients(b, h, hk, tq, tk, chunk, causal):
    q, k, audio = _case(b, h, hk, tq, tk, 8, seed=tq * 100 + tk)
    pad = torch.ones((b, tk), dtype=torch.bool)
    pad[0, :2] = False  # left padding in the first row
    fast = audio_attention_mass(q, k, audio, causal=causal, query_chunk=chunk, key_padding_mask=pad)
    slow = naive_audio_attention_mass(q, k, audio, causal=causal, key_padding_mask=pad)
    assert fast.shape == (b, h, tq) and fast.dtype == torch.float64
    assert torch.allclose(fast, slow, atol=1e-12)
    w = torch.randn(fast.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_fast = torch.autograd.grad((fast * w).sum(), (q, k))
    g_slow = torch.autograd.grad((slow * w).sum(), (q, k))
    for x, y in zip(g_fast, g_slow, strict=True):
        assert torch.allclose(x, y, atol=1e-12)


def test_gradcheck_and_float32_inputs():
    q, k, audio = _case(1, 4, 2, 3, 5, 4, seed=3)
    audio[0, 1] = True
    assert torch.autograd.gradcheck(lambda q, k: audio_attention_mass(q, k, audio, query_chunk=2), (q, k))
    q32, k32 = q.detach().float().requires_grad_(), k.detach().float().requires_grad_()
    a32 = audio_attention_mass(q32, k32, audio)
    assert a32.dtype == torch.float32 and torch.allclose(
        a32.double(), naive_audio_attention_mass(q, k, audio), atol=1e-6
    )
    a32.sum().backward()
    assert q32.grad.dtype == torch.float32 and k32.grad.shape == k32.shape


def test_row_without_audio_keys_is_zero_without_nan():
    q, k, audio = _case(2, 2, 2, 4, 6, 4, seed=5)
    audio[:] = False
    audio[1, 4] = True  # row 1: audio only at key 4, visible to the last two queries (positions 4 and 5)
    a = audio_attention_mass(q, k, audio, query_chunk=3)
    assert torch.equal(a[0], torch.zeros_like(a[0]))
    assert torch.equal(a[1, :, :2], torch.zeros_like(a[1, :, :2])) and bool((a[1, :, 2:] > 0).all())
    pad = torch.ones((2, 6), dtype=torch.bool)
    pad[1, :3] = False  # the first query of row 1 sees only padding: no allowed key at all
    a = audio_attention_mass(q, k, audio, key_padding_mask=pad)
    a.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert torch.equal(q.grad[0], torch.zeros_like(q.grad[0]))  # no audio, no gradient
    assert torch.allclose(a, naive_audio_attention_mass(q, k, audio, key_padding_mask=pad), atol=1e-12)


def test_batch_without_any_audio_key():
    q, k, audio = _case(2, 2, 1, 3, 4, 4, seed=6)
    a = audio_attention_mass(q, k, torch.zeros_like(audio))
    a.sum().backward()
    assert torch.equal(a, torch.zeros_like(a)) and torch.equal(k.grad, torch.zeros_like(k))


def test_all_keys_audio_gives_mass_one():
    q, k, audio = _case(1, 2, 1, 3, 3, 4, seed=7)
    a = audio_attention_mass(q, k, torch.ones_like(audio))
    assert torch.allclose(a, torch.ones_like(a))


def test_shape_errors():
    q, k, audio = _case(1, 3, 2, 3, 5, 4, seed=0)
    with pytest.raises(ValueError, match="multiple"):
        audio_attention_mass(q, k, audio)
    q, k, audio = _case(1, 2, 1, 6, 5, 4, seed=0)
    with pytest.raises(ValueError, match="last Tq"):
        audio_attention_mass(q, k, audio)


def test_reduce_heads_layers():
    l1 = torch.tensor([[[0.1, 0.5], [0.3, 0.2]]])  # (B=1, H=2, T=2)
    l2 = torch.tensor([[[0.4, 0.0], [0.2, 0.6]]])
    assert torch.allclose(reduce_heads_layers([l1, l2]), torch.tensor([[(0.3 + 0.4) / 2, (0.5 + 0.6) / 2]]))
