import math

import numpy as np
import pytest

from verl_modality.algorithms.config import MapoConfig
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


def test_histogram_kl_edges_and_a_hand_value():
    # all rewards exactly 1.0 land in the last bin [0.98, 1]: p = 50 there, D = 50 log((50 + eps) / (q + eps)) / 50
    q_last = 100 * 0.99**99
    expected = math.log((50 + 1e-6) / (q_last + 1e-6))
    assert histogram_beta_kl(np.ones(8)) == pytest.approx(expected, rel=1e-12)
    # all 0.0 land in the first bin, where Beta(100, 1) has (numerically) no mass: a large D
    assert histogram_beta_kl(np.zeros(8)) == pytest.approx(math.log((50 + 1e-6) / (100 * 0.01**99 + 1e-6)), rel=1e-12)
    with pytest.raises(ValueError, match=r"positions \[0\]"):
        histogram_beta_kl(np.array([float("nan"), 0.5]))


def test_tag_difficulty_reads_the_config():
    cfg = MapoConfig(target_accuracy=0.8, bins=10, beta_a=2.0, beta_b=3.0, eps=1e-9)
    r = np.array([1.0, 1.0, 0.0, 1.0])
    assert tag_difficulty(r, "binary", cfg) == pytest.approx(0.75 * math.log(0.75 / 0.8) + 0.25 * math.log(0.25 / 0.2))
    c = np.array([0.15, 0.55, 0.95])
    assert tag_difficulty(c, "auto", cfg) == pytest.approx(histogram_beta_kl(c, 10, 2.0, 3.0, 1e-9), rel=1e-12)
    # a 0/1 batch measured as continuous on request
    assert tag_difficulty(r, "continuous") == pytest.approx(histogram_beta_kl(r), rel=1e-12)
    with pytest.raises(ValueError, match="unknown difficulty kind"):
        tag_difficulty(r, "other")
    with pytest.raises(ValueError, match="q=1.0"):
        bernoulli_kl(0.5, 1.0)
