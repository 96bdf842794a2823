import math

import numpy as np
import pytest
import torch

from verl_modality.algorithms.gradient_variance import (
    contributions,
    estimator_variance,
    estimator_variance_from_gram,
    pg_variance_metrics,
    pooled_advantages,
    pooled_weights,
    reward_variance_split,
    stratified_advantages,
    stratified_weights,
)

EPS = 1e-6


def two_tag_batch():
    """Tag a at rate 0.9 (9 of 10 correct), tag b at rate 0.1 (1 of 10)."""
    scores = [1.0] * 9 + [0.0] + [1.0] + [0.0] * 9
    return scores, ["a"] * 10 + ["b"] * 10


def test_reward_split_by_hand_two_rates():
    split = reward_variance_split(*two_tag_batch())
    # pooled mean 0.5: total 0.25; each tag 0.9 * 0.1 = 0.09 within; (0.9 - 0.5)^2 = 0.16 between
    assert split["within"] == pytest.approx(0.09)
    assert split["between"] == pytest.approx(0.16)
    assert split["total"] == pytest.approx(0.25)
    assert split["ma_over_mu"] == pytest.approx(0.36)


def test_advantages_and_weights_by_hand():
    scores, tags = [1.0, 0.0, 1.0, 1.0], ["a", "a", "b", "b"]
    # tag a: mean 0.5, unbiased std sqrt(0.5); tag b constant -> 0
    s = math.sqrt(0.5)
    np.testing.assert_allclose(stratified_advantages(scores, tags), [0.5 / (s + EPS), -0.5 / (s + EPS), 0, 0])
    np.testing.assert_array_equal(stratified_advantages(scores, tags, norm_by_std=False), [0.5, -0.5, 0.0, 0.0])
    # pooled: mean 0.75, unbiased std sqrt((3 * 0.25^2 + 0.75^2) / 3) = 0.5
    np.testing.assert_allclose(pooled_advantages(scores), np.array([0.25, -0.75, 0.25, 0.25]) / (0.5 + EPS))
    np.testing.assert_allclose(pooled_advantages(scores, norm_by_std=False), [0.25, -0.75, 0.25, 0.25])
    np.testing.assert_allclose(stratified_weights(["a", "a", "a", "b"]), [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    np.testing.assert_allclose(pooled_weights(4), [0.25] * 4)
    # singleton tag and constant batch: 0
    assert stratified_advantages([0.3, 1.0, 0.0], ["x", "y", "y"])[0] == 0.0
    np.testing.assert_array_equal(pooled_advantages([0.7, 0.7, 0.7]), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(pooled_advantages([0.7]), [0.0])


def test_one_tag_batch_is_modality_unaware():
    rng = np.random.default_rng(0)
    scores = rng.random(24)
    tags = ["VA"] * 24
    for norm in (True, False):
        np.testing.assert_array_equal(
            stratified_advantages(scores, tags, norm_by_std=norm), pooled_advantages(scores, norm_by_std=norm)
        )
    np.testing.assert_array_equal(stratified_weights(tags), pooled_weights(24))
    split = reward_variance_split(scores, tags)
    assert split["between"] == 0.0 and split["ma_over_mu"] == 1.0
    assert pg_variance_metrics(scores, tags)["pg_var/ma_over_mu"] == 1.0
    # all rewards equal: nothing to split, both estimators vanish
    assert reward_variance_split([1.0] * 4, ["a", "a", "b", "b"])["ma_over_mu"] == 1.0


@pytest.mark.parametrize("norm", [True, False])
def test_stratified_matches_verl_grpo_when_each_tag_is_one_group(norm):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    g = torch.Generator().manual_seed(1)
    sizes = [2, 5, 8, 3, 8]
    tags = np.array([f"t{i}" for i, s in enumerate(sizes) for _ in range(s)], dtype=object)
    tags = tags[torch.randperm(tags.size, generator=g).numpy()]
    scores = torch.rand(tags.size, generator=g, dtype=torch.float64)
    scores[tags == "t3"] = 0.4  # a constant group
    scores[tags == "t1"] = torch.randint(0, 2, (5,), generator=g).double()
    length = 4
    rewards = torch.zeros(tags.size, length, dtype=torch.float64)
    rewards[:, -1] = scores
    mask = torch.ones(tags.size, length, dtype=torch.float64)
    verl_adv, _ = compute_grpo_outcome_advantage(rewards, mask, tags, norm_adv_by_std_in_grpo=norm)
    ours = stratified_advantages(scores, list(tags), norm_by_std=norm)
    np.testing.assert_allclose(ours, verl_adv[:, 0].numpy(), rtol=1e-9, atol=1e-9)


def test_estimator_variance_by_hand_and_from_gram():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    # mean (1, 1): deviations (0,-1), (-1,0), (1,1) -> squared norms 1, 1, 2; 3/2 * 4 = 6
    assert estimator_variance(x) == pytest.approx(6.0)
    rng = np.random.default_rng(3)
    grads = rng.normal(size=(12, 5))
    scores, tags = rng.integers(0, 2, 12).astype(float), ["a"] * 4 + ["b"] * 8
    adv, w = stratified_advantages(scores, tags), stratified_weights(tags)
    direct = estimator_variance(contributions(grads, adv, w))
    assert estimator_variance_from_gram(grads @ grads.T, adv * w) == pytest.approx(direct, rel=1e-12)
    assert estimator_variance(torch.from_numpy(contributions(grads, adv, w))) == pytest.approx(direct, rel=1e-12)


def test_estimator_variance_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n, p, batches = 10, 3, 20000
    mu, sigma = np.array([1.0, -2.0, 0.5]), np.array([0.5, 1.0, 2.0])
    x = mu + sigma * rng.standard_normal((batches, n, p))
    g = x.sum(axis=1)
    empirical = float(g.var(axis=0, ddof=1).sum())
    estimates = np.array([estimator_variance(b) for b in x])
    assert empirical == pytest.approx(n * float((sigma**2).sum()), rel=0.03)
    assert estimates.mean() == pytest.approx(empirical, rel=0.03)


def test_stratified_variance_reduction_matches_reward_split_monte_carlo():
    """Bernoulli rewards at tag rates 0.9 / 0.1 and zero-mean score functions independent of them (MAPLE's
    assumptions): the empirical Var(g_MA) / Var(g_MU) over many batches is the reward split's within / total, and
    each estimator's mean in-batch estimate is its empirical variance."""
    rng = np.random.default_rng(7)
    per_tag, p, batches = 20, 6, 3000
    rates = np.repeat([0.9, 0.1], per_tag)
    tags = ["a"] * per_tag + ["b"] * per_tag
    coef_mu, coef_ma, gs, est_mu, est_ma, cheap = [], [], [], [], [], []
    for _ in range(batches):
        r = (rng.random(rates.size) < rates).astype(float)
        grads = rng.standard_normal((rates.size, p))
        a_mu = pooled_advantages(r, norm_by_std=False) * pooled_weights(r.size)
        a_ma = stratified_advantages(r, tags, norm_by_std=False) * stratified_weights(tags)
        coef_mu.append(a_mu)
        coef_ma.append(a_ma)
        gs.append(grads)
        est_mu.append(estimator_variance(a_mu[:, None] * grads))
        est_ma.append(estimator_variance(a_ma[:, None] * grads))
        cheap.append(reward_variance_split(r, tags)["ma_over_mu"])
    gs = np.stack(gs)
    g_mu = np.einsum("bn,bnp->bp", np.stack(coef_mu), gs)
    g_ma = np.einsum("bn,bnp->bp", np.stack(coef_ma), gs)
    var_mu, var_ma = g_mu.var(axis=0, ddof=1).sum(), g_ma.var(axis=0, ddof=1).sum()
    assert np.mean(est_mu) == pytest.approx(var_mu, rel=0.05)
    assert np.mean(est_ma) == pytest.approx(var_ma, rel=0.05)
    # population split: within 0.09, total 0.25 -> 0.36; batch means shrink both by about (n - 1) / n
    assert var_ma / var_mu == pytest.approx(0.36, rel=0.08)
    assert np.mean(cheap) == pytest.approx(var_ma / var_mu, rel=0.08)


def test_pg_variance_metrics_skip_padding():
    scores, tags = two_tag_batch()
    padded_scores = [*scores, float("nan"), 5.0]
    padded_tags = [*tags, "b", "c"]
    valid = [True] * len(scores) + [False, False]
    m = pg_variance_metrics(padded_scores, padded_tags, valid)
    assert set(m) == {"pg_var/within", "pg_var/between", "pg_var/ma_over_mu"}
    assert all(isinstance(v, float) for v in m.values())
    assert m == pg_variance_metrics(torch.tensor(scores), np.array(tags, dtype=object))
    assert m["pg_var/ma_over_mu"] == pytest.approx(0.36)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="length mismatch: 3 scores but 2 tags"):
        stratified_advantages([1.0, 0.0, 1.0], ["a", "b"])
    with pytest.raises(ValueError, match="length mismatch"):
        reward_variance_split([1.0, 0.0], ["a"])
    with pytest.raises(ValueError, match="length mismatch"):
        pg_variance_metrics([1.0, 0.0], ["a", "b"], valid=[True])
    with pytest.raises(ValueError, match="empty batch"):
        pooled_advantages([])
    with pytest.raises(ValueError, match="empty batch"):
        reward_variance_split([], [])
    with pytest.raises(ValueError, match="empty batch"):
        pg_variance_metrics([1.0], ["a"], valid=[False])
    with pytest.raises(ValueError, match=r"scores are not finite .* rows \[1\]"):
        stratified_advantages([1.0, float("nan")], ["a", "a"])
    with pytest.raises(ValueError, match="not finite"):
        pg_variance_metrics([1.0, float("inf")], ["a", "b"])
    with pytest.raises(ValueError, match="None/NaN"):
        reward_variance_split([1.0, 0.0], ["a", None])
    with pytest.raises(ValueError, match="at least 2"):
        estimator_variance(np.ones((1, 3)))
    with pytest.raises(ValueError, match="2-D"):
        estimator_variance(np.ones(3))
    with pytest.raises(ValueError, match="contributions are not finite"):
        estimator_variance([[1.0, 0.0], [float("nan"), 1.0]])
    with pytest.raises(ValueError, match="length mismatch"):
        contributions(np.ones((3, 2)), [1.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="length mismatch"):
        estimator_variance_from_gram(np.eye(3), [1.0, 2.0])
