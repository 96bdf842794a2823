import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState, sigmoid
from verl_modality.algorithms.advantage import (
    ESTIMATOR_NAME,
    compute_mapo_advantage,
    group_advantage,
    mapo_stratified_advantage,
    stratum_balance,
)
from verl_modality.algorithms.batch_context import BatchContext, batch_context
from verl_modality.algorithms.config import MapoConfig
from verl_modality.algorithms.difficulty import bernoulli_kl


def random_batch(seed, n_groups=40, max_size=8, length=6, binary=True):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_size + 1, (n_groups,), generator=g).tolist()
    uid = np.array([f"p{i}" for i, s in enumerate(sizes) for _ in range(s)], dtype=object)
    perm = torch.randperm(uid.size, generator=g).numpy()
    uid = uid[perm]
    n = uid.size
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).float()
    scores = torch.randint(0, 2, (n,), generator=g).float() if binary else torch.rand(n, generator=g)
    rewards = torch.zeros(n, length)
    rewards[torch.arange(n), lengths - 1] = scores
    return rewards, mask, uid


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("norm", [True, False])
def test_group_step_is_verls_grpo_bit_for_bit(seed, norm):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards, mask, uid = random_batch(seed, binary=seed % 2 == 0)
    ref, ref_ret = compute_grpo_outcome_advantage(rewards, mask, uid, norm_adv_by_std_in_grpo=norm)
    assert torch.equal(group_advantage(rewards.sum(-1), uid, 1e-6, norm).unsqueeze(-1) * mask, ref)
    # one tag, balance and adaptive weights off: the whole estimator is verl's GRPO
    res = compute_mapo_advantage(
        rewards, mask, uid, ["VA"] * uid.size, MapoConfig(balance=False), None, None, 1e-6, norm
    )
    assert torch.equal(res.advantages, ref) and torch.equal(res.returns, ref_ret)


def test_single_tag_with_balance_is_still_grpo():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards, mask, uid = random_batch(1)
    ref, _ = compute_grpo_outcome_advantage(rewards, mask, uid)
    res = compute_mapo_advantage(rewards, mask, uid, ["S"] * uid.size, MapoConfig(balance=True))
    assert torch.equal(res.advantages, ref)  # N / (1 * N) = 1


def test_balance_gives_each_tag_the_same_total_weight():
    tags = ["V"] * 6 + ["A"] * 2 + ["VAS"] * 4 + ["V"] * 2
    valid = np.ones(len(tags), bool)
    valid[-1] = False  # a padding row
    f = stratum_balance(tags, valid)
    n, k = 13, 3
    assert f[-1] == 0.0
    for tag, n_m in (("V", 7), ("A", 2), ("VAS", 4)):
        rows = [i for i, t in enumerate(tags) if t == tag and valid[i]]
        assert np.allclose(f[rows], n / (k * n_m))
        assert math.isclose(f[rows].sum(), n / k)


def test_full_estimator_by_hand():
    # two prompts of tag V (4 responses each) and one prompt of tag A (2 responses), binary rewards
    scores = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0, 1, 0])
    uid = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 2, dtype=object)
    tags = ["V"] * 8 + ["A"] * 2
    rewards, mask = scores[:, None].clone(), torch.ones(10, 1)
    cfg = MapoConfig(adaptive_weights=True, history="global")
    res = compute_mapo_advantage(rewards, mask, uid, tags, cfg, AdaptiveWeightState(cfg), step=1)

    def grpo(vals):
        t = torch.tensor(vals)
        return (t - t.mean()) / (t.std() + 1e-6)

    base = torch.cat([grpo([1.0, 0, 0, 0]), grpo([1.0, 1, 1, 0]), grpo([1.0, 0])])
    d_v, d_a = bernoulli_kl(4 / 8, 100 / 101), bernoulli_kl(1 / 2, 100 / 101)
    mean = (d_v + d_a) / 2
    std = abs(d_v - d_a) / 2
    w_v, w_a = sigmoid((d_v - mean) / (std + 1e-6)), sigmoid((d_a - mean) / (std + 1e-6))
    bal_v, bal_a = 10 / (2 * 8), 10 / (2 * 2)
    expected = base * torch.tensor([bal_v * w_v] * 8 + [bal_a * w_a] * 2, dtype=torch.float32)
    assert torch.allclose(res.advantages[:, 0], expected, atol=1e-6)
    v = res.per_tag["V"]
    assert v["count"] == 8 and v["reward_mean"] == 0.5 and v["reward_std"] == 0.5
    assert v["zero_var_frac"] == 0.0 and v["difficulty"] == pytest.approx(d_v) and v["weight"] == pytest.approx(w_v)
    assert v["balance"] == pytest.approx(bal_v)
    assert v["adv_abs_mean"] == pytest.approx(float(expected[:8].abs().mean()), rel=1e-6)


def test_zero_variance_fraction_and_padding_rows():
    scores = torch.tensor([1.0, 1, 0, 1, 0, 0, 0])
    uid = np.array(["a", "a", "b", "b", "c", "c", "pad"], dtype=object)
    tags = ["V", "V", "V", "V", "A", "A", "V"]
    valid = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    res = compute_mapo_advantage(scores[:, None], torch.ones(7, 1), uid, tags, MapoConfig(), valid=valid)
    assert res.per_tag["V"]["zero_var_frac"] == 0.5 and res.per_tag["A"]["zero_var_frac"] == 1.0
    assert res.per_tag["V"]["count"] == 4  # the padding row is not counted
    assert res.advantages[6].abs().sum() == 0
    assert res.per_tag["V"]["balance"] == pytest.approx(6 / (2 * 4))


def test_errors_name_rows_and_tags():
    r = torch.tensor([[1.0], [float("nan")], [0.0]])
    uid = np.array(["a", "a", "b"], dtype=object)
    with pytest.raises(ValueError, match=r"row 1 \(uid a\): nan"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "V", "A"])
    r = torch.tensor([[1.0], [0.0], [0.0]])
    with pytest.raises(ValueError, match=r"unknown modality tag\(s\) \['AV'\] at rows \[2\]"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "V", "AV"])
    with pytest.raises(ValueError, match="modality_tags has 2 entries for 3"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "V"])


def test_registered_estimator_reads_tags_from_context_or_kwargs():
    from verl.trainer.ppo import core_algos

    if ESTIMATOR_NAME not in core_algos.ADV_ESTIMATOR_REGISTRY:  # the plugin registers it when core_algos loads
        core_algos.register_adv_est(ESTIMATOR_NAME)(mapo_stratified_advantage)
    fn = core_algos.get_adv_estimator_fn(ESTIMATOR_NAME)
    assert fn is mapo_stratified_advantage
    rewards, mask, uid = random_batch(3)
    tags = np.array(["V", "A", "S", "VA"] * uid.size)[: uid.size]
    algo = OmegaConf.create({"norm_adv_by_std_in_grpo": False, "mapo": {"adaptive_weights": False}})
    direct = compute_mapo_advantage(rewards, mask, uid, tags, MapoConfig(), norm_adv_by_std_in_grpo=False)
    adv, _ = fn(token_level_rewards=rewards, response_mask=mask, index=uid, config=algo, modality_tags=tags)
    assert torch.equal(adv, direct.advantages)
    ctx = BatchContext(modality_tags=list(tags))
    with batch_context(ctx):
        adv2, _ = fn(token_level_rewards=rewards, response_mask=mask, index=uid, config=algo)
    assert torch.equal(adv2, direct.advantages)
    assert ctx.stats == direct.per_tag
    with pytest.raises(ValueError, match="modality_tags"):
        fn(token_level_rewards=rewards, response_mask=mask, index=uid, config=algo)
    with batch_context(ctx), pytest.raises(RuntimeError, match="nest"):
        with batch_context(ctx):
            pass
