"""The actor-side audio mass from captured q/k in verl's two layouts (packed and padded), and the usable layers."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from verl_modality.algorithms.audio_mass import naive_audio_attention_mass
from verl_modality.models.attention_capture import nested_response_audio_mass, usable_layers

AUDIO = 99


def _capture(q, k):
    return SimpleNamespace(layers=[0], states={0: (q, k)}, _modules={0: SimpleNamespace(scaling=0.5)})


def test_packed_and_padded_layouts_give_each_sequence_its_own_mass():
    g = torch.Generator().manual_seed(0)
    lengths, responses = [7, 5], [3, 2]
    ids = [torch.tensor([1, AUDIO, AUDIO, 2, 3, 4, 5]), torch.tensor([AUDIO, 6, 7, 8, 9])]
    qs = [torch.randn(1, 2, n, 4, generator=g) for n in lengths]
    ks = [torch.randn(1, 2, n, 4, generator=g) for n in lengths]
    nested = torch.nested.as_nested_tensor(ids, layout=torch.jagged)
    expected = []
    for q, k, x, n, r in zip(qs, ks, ids, lengths, responses, strict=True):
        p = n - r  # response token t is predicted at position p - 1 + t
        mass = naive_audio_attention_mass(
            q[:, :, p - 1 : n - 1], k[:, :, : n - 1], (x[: n - 1] == AUDIO)[None], causal=True, scale=0.5
        )
        expected.append(mass[0].max(0).values)
    packed = nested_response_audio_mass(
        _capture(torch.cat(qs, 2), torch.cat(ks, 2)), nested, responses, AUDIO, packed=True
    )
    pad = [torch.nn.functional.pad(t, (0, 0, 0, 7 - t.shape[2])) for t in qs]
    kpad = [torch.nn.functional.pad(t, (0, 0, 0, 7 - t.shape[2])) for t in ks]
    padded = nested_response_audio_mass(
        _capture(torch.cat(pad), torch.cat(kpad)), nested, responses, AUDIO, packed=False
    )
    for out in (packed, padded):
        assert out.shape == (2, 3)
        assert torch.allclose(out[0], expected[0], atol=1e-6)
        assert torch.allclose(out[1, :2], expected[1], atol=1e-6) and out[1, 2] == 0


def test_shallow_models_use_the_layers_they_have():
    model = SimpleNamespace(model=SimpleNamespace(layers=[SimpleNamespace(self_attn=None)] * 2))
    assert usable_layers(model, [-3, -2, -1]) == [-2, -1]
    try:
        usable_layers(model, [-5])
    except ValueError as err:
        assert "none of them exists in a 2-layer model" in str(err)
    else:
        raise AssertionError("expected an error")
