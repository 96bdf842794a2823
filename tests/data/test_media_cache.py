"""Content-keyed memoisation of the processor's media components: same results, fewer calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl_modality.data.media_cache import ContentCache, cached_processor, content_key


def test_content_key_depends_on_bytes_dtype_shape_and_options():
    a = np.arange(6, dtype=np.float32)
    assert content_key((a,), {"x": 1}) == content_key((a.copy(),), {"x": 1})
    assert content_key((a,), {"x": 1}) != content_key((a,), {"x": 2})
    assert content_key((a,), {}) != content_key((a.astype(np.float64),), {})
    assert content_key((a,), {}) != content_key((a.reshape(2, 3),), {})
    b = a.copy()
    b[3] = 7
    assert content_key((a,), {}) != content_key((b,), {})
    assert content_key((torch.ones(2),), {}) != content_key((torch.ones(2, dtype=torch.float64),), {})
    assert content_key((object(),), {}) is None


def test_cache_returns_equal_copies_and_passes_uncacheable_calls_through():
    calls = []

    def extract(wave, scale=1.0):
        calls.append(1)
        return {"features": torch.as_tensor(wave) * scale}

    cache = ContentCache(extract, max_entries=2)
    w = np.ones(4, dtype=np.float32)
    first = cache(w, scale=2.0)
    first["features"] += 100  # the caller changing its result does not change the stored one
    again = cache(w.copy(), scale=2.0)
    assert torch.equal(again["features"], torch.full((4,), 2.0)) and len(calls) == 1
    cache(w, scale=3.0)
    cache(w * 2, scale=3.0)  # evicts the oldest entry (LRU, 2 entries)
    cache(w, scale=2.0)
    assert len(calls) == 4 and (cache.hits, cache.misses) == (1, 4)
    passthrough = ContentCache(lambda value: type(value).__name__)
    assert passthrough(object()) == "object" and (passthrough.hits, passthrough.misses) == (0, 0)
    with pytest.raises(ValueError, match="max_entries"):
        ContentCache(extract, max_entries=0)


def test_cached_processor_leaves_the_original_alone(tiny_model_dir):
    from verl_modality.models.omni import load_omni_processor

    proc = load_omni_processor(str(tiny_model_dir))
    cached = cached_processor(proc, 8)
    assert isinstance(cached.feature_extractor, ContentCache) and not isinstance(proc.feature_extractor, ContentCache)
    wave = np.sin(np.linspace(0, 200, 24000)).astype(np.float32)
    text = "<|audio_bos|><|AUDIO|><|audio_eos|> hi"
    want = proc(text=[text], audio=[wave], return_tensors="pt")
    for _ in range(2):
        got = cached(text=[text], audio=[wave], return_tensors="pt")
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert cached.feature_extractor.hits == 1 and cached.feature_extractor.misses == 1
