import math

import numpy as np
import pytest

from verl_modality.algorithms.difficulty import (
    bernoulli_kl,
    beta_pdf,
    detect_reward_kind,
    histogram_beta_kl,
    tag_difficulty,
)

Q = 100 / 101


def test_bernoulli_kl_by_hand():
    assert bernoulli_kl(0.5, Q) == pytest.approx(0.5 * math.log(0.5 / Q) + 0.5 * math.log(0.5 / (1 - Q)))
    assert bernoulli_kl(Q, Q) == pytest.approx(0.0, abs=1e-12)
    # p = 0 is clipped to eps: log(1/(1-q)) dominates, finite
    eps = 1e-6
    assert bernoulli_kl(0.0, Q, eps) == pytest.approx(
        eps * math.log(eps / Q) + (1 - eps) * math.log((1 - eps) / (1 - Q))
    )
    assert bernoulli_kl(0.2, Q) > bernoulli_kl(0.8, Q)  # harder tags are further from the target


def test_beta_pdf_matches_closed_form():
    x = np.array([0.1, 0.5, 0.99])
    assert np.allclose(beta_pdf(x, 100.0, 1.0), 100 * x**99)
    assert np.allclose(beta_pdf(x, 2.0, 3.0), 12 * x * (1 - x) ** 2)


def test_histogram_kl_against_direct_computation():
    rng = np.random.default_rng(0)
    r = rng.uniform(0.3, 1.0, size=64)
    p, edges = np.histogram(r, bins=50, range=(0, 1), density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    q = np.array([math.exp(math.lgamma(101) - math.lgamma(100) - math.lgamma(1) + 99 * math.log(c)) for c in centres])
    eps = 1e-6
    expected = sum(pk * math.log((pk + eps) / (qk + eps)) for pk, qk in zip(p, q, strict=True)) * (1 / 50)
    assert histogram_beta_kl(r) == pytest.approx(expected, rel=1e-12)
    # near-perfect scores are closer to Beta(100, 1) than mediocre ones
    assert histogram_beta_kl(np.full(16, 0.995)) < histogram_beta_kl(np.full(16, 0.5))


def test_histogram_kl_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        histogram_beta_kl(np.array([0.5, 1.5]))


def test_auto_kind_and_dispatch():
    assert detect_reward_kind(np.array([0.0, 1.0, 1.0])) == "binary"
    assert detect_reward_kind(np.array([0.0, 0.5])) == "continuous"
    assert tag_difficulty(np.array([1.0, 0.0, 1.0, 1.0])) == pytest.approx(bernoulli_kl(0.75, Q))
    assert tag_difficulty(np.array([0.2, 0.9])) == pytest.approx(histogram_beta_kl(np.array([0.2, 0.9])))
    with pytest.raises(ValueError, match="not 0 or 1"):
        tag_difficulty(np.array([0.5, 1.0]), "binary")
    with pytest.raises(ValueError, match="at least one"):
        tag_difficulty(np.array([]))
