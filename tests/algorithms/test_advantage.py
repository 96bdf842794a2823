import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState
from verl_modality.algorithms.advantage import (
    ESTIMATOR_NAME,
    compute_mapo_advantage,
    group_advantage,
    mapo_stratified_advantage,
    stratum_balance,
)
from verl_modality.algorithms.batch_context import BatchContext, batch_context, current_batch_context
from verl_modality.algorithms.config import MapoConfig
from verl_modality.algorithms.difficulty import histogram_beta_kl

Q = 100 / 101
EPS = 1e-6


def random_batch(seed, n_groups=40, max_size=8, length=6, kind="binary", dtype=torch.float32):
    """Groups of 1..max_size responses in shuffled row order; the score sits on the last response token."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_size + 1, (n_groups,), generator=g).tolist()
    uid = np.array([f"p{i}" for i, s in enumerate(sizes) for _ in range(s)], dtype=object)
    uid = uid[torch.randperm(uid.size, generator=g).numpy()]
    n = uid.size
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).to(dtype)
    if kind == "binary":
        scores = torch.randint(0, 2, (n,), generator=g).double()
    elif kind == "judge":  # LLM-judge style scores in {0, 0.2, ..., 1}: many constant groups with inexact means
        scores = torch.randint(0, 6, (n,), generator=g).double() / 5
        scores[np.isin(uid, uid[: n // 3])] = 0.6
    else:
        scores = torch.rand(n, generator=g, dtype=torch.float64) * 3 - 1
    rewards = torch.zeros(n, length, dtype=dtype)
    rewards[torch.arange(n), lengths - 1] = scores.to(dtype)
    return rewards, mask, uid


def group_tags(uid, choices):
    """One tag per prompt group, cycling through ``choices``."""
    order = {u: i for i, u in enumerate(dict.fromkeys(uid))}
    return [choices[order[u] % len(choices)] for u in uid]


def verl_grpo(rewards, mask, uid, norm=True):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    return compute_grpo_outcome_advantage(rewards.clone(), mask, uid, norm_adv_by_std_in_grpo=norm)


def bern_kl(p):  # MAPLE Eq. 9 written out, p clipped to [eps, 1 - eps]
    p = min(max(p, EPS), 1 - EPS)
    return p * math.log(p / Q) + (1 - p) * math.log((1 - p) / (1 - Q))


def sig(z):
    return 1 / (1 + math.exp(-z))


def pop_mean_std(values):
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


# ------------------------------------------------------------------------------------------------- step 1: group


@pytest.mark.parametrize("kind", ["binary", "judge", "uniform"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_group_step_is_verls_looped_grpo_bit_for_bit(seed, norm, dtype, kind):
    from verl.trainer.ppo.core_algos import compute_grpo_vectorized_outcome_advantage

    rewards, mask, uid = random_batch(seed, kind=kind, dtype=dtype)
    ref, ref_ret = verl_grpo(rewards, mask, uid, norm)
    ours = group_advantage(rewards.sum(-1), uid, EPS, norm).unsqueeze(-1) * mask
    assert ours.dtype == ref.dtype and torch.equal(ours, ref)
    # verl's vectorized variant reduces in another order: equal up to rounding on groups with a spread. On constant
    # groups a rounding-level (r - mean) is divided by (std + eps) ~ eps, so the two verl variants can differ there.
    vec, _ = compute_grpo_vectorized_outcome_advantage(rewards, mask, uid, norm_adv_by_std_in_grpo=norm)
    scores = rewards.sum(-1).double().numpy()
    spread = {u: np.ptp(scores[uid == u]) for u in set(uid)}
    rows = torch.from_numpy(np.array([spread[u] > 0 for u in uid]))
    assert torch.allclose(ours[rows], vec[rows], rtol=0, atol=1e-5)
    # one tag, balance and adaptive weights off: the whole estimator is verl's GRPO
    res = compute_mapo_advantage(
        rewards, mask, uid, ["VA"] * uid.size, MapoConfig(balance=False), None, None, EPS, norm
    )
    assert torch.equal(res.advantages, ref) and torch.equal(res.returns, ref_ret)


@pytest.mark.parametrize("size", [2, 3, 16, 33, 64, 200])
def test_group_step_large_and_constant_groups(size):
    # torch's 1-D std of a constant group is not always 0 (the rounded mean differs from the value): verl's GRPO
    # then gives tiny non-zero advantages, which must be reproduced exactly, not "fixed".
    g = torch.Generator().manual_seed(size)
    n_groups = 30
    values = torch.rand(n_groups, generator=g)
    scores = values.repeat_interleave(size)
    scores[: size * 10] = torch.rand(size * 10, generator=g)  # ten non-constant groups
    uid = np.repeat(np.arange(n_groups), size)
    rewards, mask = scores[:, None].clone(), torch.ones(scores.numel(), 1)
    for norm in (True, False):
        ref, _ = verl_grpo(rewards, mask, uid, norm)
        assert torch.equal(group_advantage(scores, uid, EPS, norm), ref[:, 0])


def test_group_step_bf16_and_singletons_only():
    rewards, mask, uid = random_batch(7, max_size=3, dtype=torch.bfloat16)
    ref, _ = verl_grpo(rewards, mask, uid)
    assert torch.equal(group_advantage(rewards.sum(-1), uid).unsqueeze(-1) * mask, ref)
    # every group a singleton: verl uses mean 0, std 1 -> r / (1 + eps)
    r = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    ref, _ = verl_grpo(r[:, None], torch.ones(3, 1, dtype=torch.float64), np.array(["a", "b", "c"], dtype=object))
    assert torch.equal(group_advantage(r, ["a", "b", "c"]), ref[:, 0])


def test_group_step_integer_uids_and_unequal_sizes():
    rewards, mask, uid = random_batch(11, n_groups=60, max_size=12, kind="uniform")
    int_uid = np.array([int(u[1:]) for u in uid])
    ref, _ = verl_grpo(rewards, mask, int_uid)
    assert torch.equal(group_advantage(rewards.sum(-1), int_uid).unsqueeze(-1) * mask, ref)


# ------------------------------------------------------------------------------------------------ step 2: balance


def test_balance_gives_each_tag_the_same_total_weight():
    tags = ["V"] * 6 + ["A"] * 2 + ["VAS"] * 4 + ["V"] * 2
    valid = np.ones(len(tags), bool)
    valid[-1] = False  # a padding row
    f = stratum_balance(tags, valid)
    n, k = 13, 3
    assert f[-1] == 0.0
    for tag, n_m in (("V", 7), ("A", 2), ("VAS", 4)):
        rows = [i for i, t in enumerate(tags) if t == tag and valid[i]]
        assert np.all(f[rows] == n / (k * n_m))
        assert math.isclose(f[rows].sum(), n / k)


def test_balance_in_the_estimator():
    rewards, mask, uid = random_batch(5, n_groups=30)
    tags = group_tags(uid, ["VAS", "VS", "A", "V"])
    base = group_advantage(rewards.sum(-1), uid)
    res = compute_mapo_advantage(rewards, mask, uid, tags, MapoConfig(balance=True))
    n, k = uid.size, 4
    for tag, st in res.per_tag.items():
        rows = np.array([t == tag for t in tags])
        assert st["count"] == rows.sum() and st["balance"] == n / (k * rows.sum())
        assert st["balance"] * st["count"] == pytest.approx(n / k)
        expected = base[rows] * torch.tensor(n / (k * rows.sum()), dtype=torch.float64).float()
        assert torch.allclose(res.advantages[rows].sum(-1), (expected.unsqueeze(-1) * mask[rows]).sum(-1))
    assert list(res.per_tag) == ["V", "A", "VS", "VAS"]  # canonical order


# ------------------------------------------------------------------------------------------- steps 3-4: weights


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
        return (t - t.mean()) / (t.std() + EPS)

    base = torch.cat([grpo([1.0, 0, 0, 0]), grpo([1.0, 1, 1, 0]), grpo([1.0, 0])])
    d_v, d_a = bern_kl(4 / 8), bern_kl(1 / 2)
    mean, std = pop_mean_std([d_v, d_a])
    w_v, w_a = sig((d_v - mean) / (std + EPS)), sig((d_a - mean) / (std + EPS))
    bal_v, bal_a = 10 / (2 * 8), 10 / (2 * 2)
    expected = base * torch.tensor([bal_v * w_v] * 8 + [bal_a * w_a] * 2, dtype=torch.float32)
    assert torch.allclose(res.advantages[:, 0], expected, atol=1e-6)
    v = res.per_tag["V"]
    assert v["count"] == 8 and v["reward_mean"] == 0.5 and v["reward_std"] == 0.5
    assert v["zero_var_frac"] == 0.0 and v["difficulty"] == pytest.approx(d_v) and v["weight"] == pytest.approx(w_v)
    assert v["balance"] == pytest.approx(bal_v)
    assert v["adv_abs_mean"] == pytest.approx(float(expected[:8].abs().mean()), rel=1e-6)


def test_single_tag_first_step_weight_is_one_half_exactly():
    rewards, mask, uid = random_batch(2)
    ref, _ = verl_grpo(rewards, mask, uid)
    cfg = MapoConfig(adaptive_weights=True)
    res = compute_mapo_advantage(rewards, mask, uid, ["S"] * uid.size, cfg)  # no state: this step only
    assert res.per_tag["S"]["weight"] == 0.5 and res.per_tag["S"]["balance"] == 1.0
    assert torch.equal(res.advantages, ref * 0.5)


# Scripted stream: per step, {tag: (number correct, number of responses)}, 4 responses per prompt.
STREAM = [
    {"V": (2, 8), "A": (6, 8)},
    {"V": (4, 8)},
    {"A": (1, 4), "VAS": (7, 8)},
    {"V": (8, 8), "A": (3, 4)},
]


def stream_batch(step_spec):
    scores, uid, tags = [], [], []
    for tag, (correct, total) in step_spec.items():
        vals = [1.0] * correct + [0.0] * (total - correct)
        scores += vals
        uid += [f"{tag}-{i // 4}" for i in range(total)]
        tags += [tag] * total
    return torch.tensor(scores)[:, None], torch.ones(len(scores), 1), np.array(uid, dtype=object), tags


@pytest.mark.parametrize("history", ["global", "per_tag"])
def test_weight_sequence_over_steps_by_hand(history):
    window = 2  # steps: step s keeps the values of steps s-1 and s
    cfg = MapoConfig(adaptive_weights=True, history=history, history_window=window)
    state = AdaptiveWeightState(cfg)
    hist = []  # (step, tag, D) by hand
    for step, spec in enumerate(STREAM, start=1):
        rewards, mask, uid, tags = stream_batch(spec)
        res = compute_mapo_advantage(rewards, mask, uid, tags, cfg, state, step=step)
        d_now = {tag: bern_kl(c / t) for tag, (c, t) in spec.items()}
        hist = [h for h in hist if h[0] > step - window] + [(step, tag, d) for tag, d in d_now.items()]
        for tag, d in d_now.items():
            pool = [v for _, t, v in hist if history == "global" or t == tag]
            m, s = pop_mean_std(pool)
            w = sig((d - m) / (s + EPS))
            assert res.per_tag[tag]["difficulty"] == pytest.approx(d, rel=1e-12)
            assert res.per_tag[tag]["weight"] == pytest.approx(w, rel=1e-9)
            if len(pool) == 1:
                assert res.per_tag[tag]["weight"] == 0.5
    # the window dropped steps 1-2: the history holds steps 3 and 4 only
    assert sorted(state.history()) == sorted(v for _, _, v in hist) and len(hist) == 4


def test_continuous_rewards_use_the_histogram_kl():
    rewards, mask, uid = random_batch(4, kind="judge")
    tags = ["VA" if u < "p2" else "AS" for u in uid]
    res = compute_mapo_advantage(rewards, mask, uid, tags, MapoConfig(adaptive_weights=True))
    scores = rewards.sum(-1).double().numpy()
    for tag in ("VA", "AS"):
        sel = np.array([t == tag for t in tags])
        assert res.per_tag[tag]["difficulty"] == pytest.approx(histogram_beta_kl(scores[sel]), rel=1e-12)
        assert res.per_tag[tag]["reward_std"] == pytest.approx(float(np.std(scores[sel])), rel=1e-12)


# ---------------------------------------------------------------------------------------- padding and statistics


def test_zero_variance_fraction_and_padding_rows():
    scores = torch.tensor([1.0, 1, 0, 1, 0, 0, float("nan")])  # the padding row's reward is garbage
    uid = np.array(["a", "a", "b", "b", "c", "c", "pad"], dtype=object)
    tags = ["V", "V", "V", "V", "A", "A", None]
    valid = np.array([1, 1, 1, 1, 1, 1, 0], bool)
    res = compute_mapo_advantage(scores[:, None], torch.ones(7, 1), uid, tags, MapoConfig(), valid=valid)
    assert res.per_tag["V"]["zero_var_frac"] == 0.5 and res.per_tag["A"]["zero_var_frac"] == 1.0
    assert res.per_tag["V"]["count"] == 4  # the padding row is not counted
    assert res.advantages[6].item() == 0.0
    assert res.per_tag["V"]["balance"] == 6 / (2 * 4)


@pytest.mark.parametrize("adaptive", [False, True])
def test_padding_rows_change_nothing_for_real_rows(adaptive):
    rewards, mask, uid = random_batch(9, n_groups=20)
    tags = group_tags(uid, ["V", "V", "AS"])
    cfg = MapoConfig(adaptive_weights=adaptive)
    plain = compute_mapo_advantage(rewards, mask, uid, tags, cfg, step=1)
    # verl pads by repeating rows of the batch (same uid, same tag) up to a divisible size
    pad = np.arange(5)
    rewards_p = torch.cat([rewards, rewards[pad]])
    mask_p = torch.cat([mask, mask[pad]])
    uid_p = np.concatenate([uid, uid[pad]])
    tags_p = tags + [tags[i] for i in pad]
    valid = np.r_[np.ones(uid.size, bool), np.zeros(pad.size, bool)]
    padded = compute_mapo_advantage(rewards_p, mask_p, uid_p, tags_p, cfg, valid=valid, step=1)
    assert torch.equal(padded.advantages[: uid.size], plain.advantages)
    assert torch.all(padded.advantages[uid.size :] == 0)
    assert padded.per_tag == plain.per_tag


def test_errors_name_rows_and_tags():
    uid = np.array(["a", "a", "b"], dtype=object)
    r = torch.tensor([[1.0], [float("nan")], [0.0]])
    with pytest.raises(ValueError, match=r"row 1 \(uid a\): nan"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "V", "A"])
    r = torch.tensor([[1.0], [0.0], [float("inf")]])
    with pytest.raises(ValueError, match=r"row 2 \(uid b\): inf"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "V", "A"])
    r = torch.tensor([[1.0], [0.0], [0.0]])
    with pytest.raises(ValueError, match=r"unknown modality tag\(s\) \['AV'\] at rows \[2\]; allowed tags are \['V'"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "V", "AV"])
    with pytest.raises(ValueError, match=r"unknown modality tag\(s\) \['None'\] at rows \[0\]"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, [None, "V", "A"])
    with pytest.raises(ValueError, match=r"unknown modality tag\(s\) \['VAS'\] at rows \[1, 2\]"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "VAS", "VAS"], MapoConfig(tags=("V", "A")))
    with pytest.raises(ValueError, match="modality_tags has 2 entries for 3"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "V"])
    with pytest.raises(ValueError, match="index has 2 entries for 3"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid[:2], ["V", "V", "A"])
    with pytest.raises(ValueError, match=r"must both be \(N, T\)"):
        compute_mapo_advantage(r, torch.ones(3, 2), uid, ["V", "V", "A"])
    with pytest.raises(ValueError, match=r"more than one modality tag: uid a: tags \['A', 'V'\]"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "A", "A"])
    with pytest.raises(ValueError, match="no real responses"):
        compute_mapo_advantage(r, torch.ones(3, 1), uid, ["V", "V", "A"], valid=np.zeros(3, bool))


# ---------------------------------------------------------------------------------- verl registration and context


@pytest.fixture
def registered():
    from verl.trainer.ppo import core_algos

    added = ESTIMATOR_NAME not in core_algos.ADV_ESTIMATOR_REGISTRY  # the plugin may have registered it already
    core_algos.register_adv_est(ESTIMATOR_NAME)(mapo_stratified_advantage)  # same function again is a no-op
    yield core_algos
    if added:
        del core_algos.ADV_ESTIMATOR_REGISTRY[ESTIMATOR_NAME]


def test_registered_estimator_reads_tags_from_kwargs_or_context(registered):
    fn = registered.get_adv_estimator_fn(ESTIMATOR_NAME)
    assert fn is mapo_stratified_advantage
    rewards, mask, uid = random_batch(3)
    tags = np.array(group_tags(uid, ["V", "A", "S", "VA"]))
    algo = OmegaConf.create({"norm_adv_by_std_in_grpo": False, "mapo": {"adaptive_weights": False}})
    direct = compute_mapo_advantage(rewards, mask, uid, tags, MapoConfig(), norm_adv_by_std_in_grpo=False)
    # the keyword arguments verl's compute_advantage passes, plus our tags
    adv, ret = fn(token_level_rewards=rewards, response_mask=mask, index=uid, config=algo, modality_tags=tags)
    assert torch.equal(adv, direct.advantages) and torch.equal(ret, direct.returns)

    ctx = BatchContext(modality_tags=list(tags))
    stats = ctx.stats
    with batch_context(ctx):
        adv2, _ = fn(token_level_rewards=rewards, response_mask=mask, index=uid, config=algo, non_tensor_batch={})
    assert torch.equal(adv2, direct.advantages)
    assert ctx.stats is stats and ctx.stats == direct.per_tag  # filled in place
    assert current_batch_context() is None

    with pytest.raises(ValueError, match="modality_tags=") as err:
        fn(token_level_rewards=rewards, response_mask=mask, index=uid, config=algo)
    assert "batch_context" in str(err.value)


def test_explicit_arguments_win_over_the_context():
    rewards, mask, uid = random_batch(6)
    tags = ["V"] * uid.size
    valid = np.ones(uid.size, bool)
    valid[:3] = False
    cfg_on = {"mapo": {"adaptive_weights": True}}
    ctx_state = AdaptiveWeightState(MapoConfig(adaptive_weights=True))
    ctx = BatchContext(modality_tags=["A"] * uid.size, valid=np.ones(uid.size, bool), state=ctx_state, step=3)
    with batch_context(ctx):
        adv, _ = mapo_stratified_advantage(rewards, mask, uid, cfg_on, modality_tags=tags, valid=valid)
    assert list(ctx.stats) == ["V"] and ctx.stats["V"]["count"] == uid.size - 3  # explicit tags and valid
    assert ctx_state.history() and ctx_state.steps_seen == 3  # state and step still came from the context
    assert torch.all(adv[:3] == 0)
    own = AdaptiveWeightState(MapoConfig(adaptive_weights=True))
    with batch_context(ctx):
        mapo_stratified_advantage(rewards, mask, uid, cfg_on, state=own, step=7)
    assert own.steps_seen == 7 and ctx_state.steps_seen == 3


def test_norm_flag_is_read_from_the_algorithm_config():
    rewards, mask, uid = random_batch(8)
    tags = ["VS"] * uid.size
    for norm in (True, False):
        algo = {"norm_adv_by_std_in_grpo": norm, "mapo": {"balance": False}}
        adv, _ = mapo_stratified_advantage(rewards, mask, uid, algo, modality_tags=tags)
        assert torch.equal(adv, verl_grpo(rewards, mask, uid, norm)[0])
    adv, _ = mapo_stratified_advantage(rewards, mask, uid, None, modality_tags=tags)  # defaults: norm on
    assert torch.equal(adv, verl_grpo(rewards, mask, uid, True)[0])
    with pytest.raises(ValueError, match=r"algorithm.mapo.history='foo'"):
        mapo_stratified_advantage(rewards, mask, uid, {"mapo": {"history": "foo"}}, modality_tags=tags)
