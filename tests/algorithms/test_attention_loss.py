"""MAPO-AT attention loss math: token weights, gate, loss by hand."""

import math

import pytest
import torch

from verl_modality.algorithms.attention_loss import (
    attention_loss,
    complementary_weights,
    effective_content_mask,
    sequence_gate,
    sequence_tau,
    task_failed,
    temporal_weights,
)


def test_temporal_weights_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    assert torch.allclose(temporal_weights(mask), torch.tensor([[0.25, 0.5, 0.75, 1.0, 0], [0.5, 1.0, 0, 0, 0]]))
    assert torch.allclose(temporal_weights(mask, kappa=2.0)[1], torch.tensor([0.25, 1.0, 0, 0, 0]))
    assert torch.equal(temporal_weights(torch.zeros((1, 3))), torch.zeros((1, 3)))
    assert torch.allclose(sequence_tau(mask, 2.0), torch.tensor([2 * math.log(4), 2 * math.log(2)]))


def test_complementary_weights_by_hand():
    dh = torch.tensor([[0.0, 1.0, -2.0, 5.0], [0.3, 0.0, 0.0, 0.0]])
    content = torch.tensor([[True, True, True, False], [True, False, False, False]])
    v = complementary_weights(dh, content, tau=torch.tensor([1.0, 1.0]), c_mask=100.0)
    e = torch.exp(-torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(v[0, :3], 3 * e / e.sum()) and v[0, 3] == 0
    assert torch.allclose(v[0, :3].mean(), torch.tensor(1.0))  # mean 1 over content tokens before the cap
    assert torch.allclose(v[1], torch.tensor([1.0, 0, 0, 0]))
    capped = complementary_weights(dh, content, tau=0.1, c_mask=2.0)  # sharp: the first token takes ~all
    assert capped[0, 0] == 2.0 and float(capped.max()) <= 2.0
    assert torch.equal(complementary_weights(dh, torch.zeros_like(content), 1.0), torch.zeros_like(dh))


def test_task_failed_is_reward_at_most_zero_or_not_finite():
    reward = torch.tensor([1.0, 0.0, -0.5, 0.5, float("nan"), float("inf"), float("-inf"), 1e-9])
    assert task_failed(reward).tolist() == [False, True, True, False, True, True, True, False]


def test_sequence_gate_cases():
    # failed (reward <= 0 or not finite): max(|A|, 0.02); succeeded: 0.1 |A|; capped at 3; a NaN |A| counts as 0
    reward = torch.tensor([0.0, 1.0, 0.0, 0.5, 1.0, 0.0, -1.0, float("nan"), 1.0])
    adv = torch.tensor([0.8, 0.8, -5.0, 2.0, 40.0, 0.0, 0.01, float("nan"), 0.0])
    release = [0.8, 0.08, 3.0, 0.2, 3.0, 0.02, 0.02, 0.02, 0.0]  # default floor 0.02 (failed rows 5, 6, 7 lifted)
    assert torch.allclose(sequence_gate(reward, adv), torch.tensor(release))
    no_floor = [0.8, 0.08, 3.0, 0.2, 3.0, 0.0, 0.01, 0.0, 0.0]  # advantage_floor_eps=0: |A| as it is
    assert torch.allclose(sequence_gate(reward, adv, advantage_floor_eps=0.0), torch.tensor(no_floor))
    assert torch.allclose(sequence_gate(reward, adv, advantage_floor_eps=0.5)[[0, 5, 6]], torch.tensor([0.8, 0.5, 0.5]))
    with pytest.raises(ValueError, match="advantage_floor_eps=-0.1"):
        sequence_gate(reward, adv, advantage_floor_eps=-0.1)


def test_effective_content_mask_fallback():
    content = torch.tensor([[False, False, False, True], [True, False, False, False], [False, False, False, False]])
    response = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])  # (0, 3) is outside the response
    assert effective_content_mask(content, response).tolist() == [
        [True, True, True, False],  # no content token of its own: every response token
        [True, False, False, False],  # has one: unchanged
        [False, False, False, False],  # no response token at all: nothing
    ]
    assert effective_content_mask(content, response, "skip").tolist() == [
        [False, False, False, False],
        [True, False, False, False],
        [False, False, False, False],
    ]
    with pytest.raises(ValueError, match="content_fallback='none'"):
        effective_content_mask(content, response, "none")


def test_attention_loss_by_hand():
    a = torch.tensor([[0.5, 0.2, 0.1, 0.9], [0.4, 0.8, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    content = torch.tensor([[True, False, True, True], [True, True, False, False]])  # (0, 3) is outside the response
    dh = torch.tensor([[0.2, 9.0, -0.4, 0.0], [0.0, 1.0, 0.0, 0.0]])
    reward = torch.tensor([0.0, 1.0])
    adv = torch.tensor([-1.5, 2.0])
    eps = 1e-6
    kw = dict(kappa=1.0, tau_base=1.0, c_mask=5.0, eps=eps)

    # row 0: T=3, tau=log 3, content t=1,3; gate = 1.5 (failed, above the floor)
    tau0 = math.log(3)
    e0 = [math.exp(-0.2 / tau0), math.exp(-0.4 / tau0)]
    v0 = [2 * x / sum(e0) for x in e0]
    row0 = 1.5 * ((1 / 3) * v0[0] * -math.log(0.5 + eps) + 1.0 * v0[1] * -math.log(0.1 + eps))
    # row 1: T=2, tau=log 2, content t=1,2; gate = 0.1 * 2 (succeeded)
    tau1 = math.log(2)
    e1 = [1.0, math.exp(-1.0 / tau1)]
    v1 = [2 * x / sum(e1) for x in e1]
    row1 = 0.2 * (0.5 * v1[0] * -math.log(0.4 + eps) + 1.0 * v1[1] * -math.log(0.8 + eps))
    seq_mean = (row0 / 2 + row1 / 2) / 2  # default: each row over its 2 content tokens, then over the 2 rows
    token_mean = (row0 + row1) / 4  # the option: over the batch's 4 content tokens
    # both rows have N_i = 2, so here the two reductions agree (row0 = 3.51838, row1 = 0.16529): 0.92092
    assert seq_mean == pytest.approx(0.92092, abs=1e-5) and token_mean == pytest.approx(0.92092, abs=1e-5)

    loss, metrics = attention_loss(a, mask, content, dh, reward, adv, **kw)
    assert loss.item() == pytest.approx(seq_mean, rel=1e-5)
    assert metrics["attn/loss"] == pytest.approx(seq_mean, rel=1e-5)
    assert metrics["attn/content_tokens"] == 4 and metrics["attn/no_content_sequences"] == 0
    assert metrics["attn/gate_mean"] == pytest.approx((1.5 + 0.2) / 2)
    # thirds: row 0 first = t=1 (0.5), last = t=3 (0.1); row 1 (T=2) first = none, last = t=2 (0.8)
    assert metrics["attn/audio_mass_first_third"] == pytest.approx(0.5)
    assert metrics["attn/audio_mass_last_third"] == pytest.approx((0.1 + 0.8) / 2)
    loss.backward()
    assert a.grad[0, 1] == 0 and a.grad[0, 3] == 0 and a.grad[1, 2] == 0  # non-content / outside the response
    assert a.grad[0, 0] == pytest.approx(-1.5 * (1 / 3) * v0[0] / (0.5 + eps) / 2 / 2, rel=1e-5)

    a.grad = None
    loss, metrics = attention_loss(a, mask, content, dh, reward, adv, reduction="token_mean", **kw)
    assert loss.item() == pytest.approx(token_mean, rel=1e-5)
    loss.backward()
    assert a.grad[0, 0] == pytest.approx(-1.5 * (1 / 3) * v0[0] / (0.5 + eps) / 4, rel=1e-5)


def test_attention_loss_reductions_differ_with_unequal_content_counts():
    # row 0: T=2, content t=1,2, a = (1/2, 1/4), failed, |A| = 1: S_0 = 1 * (1/2 ln 2 + 1 * ln 4) = 2.5 ln 2, N_0 = 2
    # row 1: T=3, content t=3 only, a_3 = 1/8, failed, |A| = 2: S_1 = 2 * (1 * ln 8) = 6 ln 2, N_1 = 1
    # dh = 0: v is 1 on every content token; eps = 0 keeps the logs exact
    a = torch.tensor([[0.5, 0.25, 0.9], [0.9, 0.9, 0.125]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    content = torch.tensor([[True, True, False], [False, False, True]])
    args = (a, mask, content, torch.zeros((2, 3)), torch.tensor([0.0, 0.0]), torch.tensor([1.0, -2.0]))
    ln2 = math.log(2)
    seq, _ = attention_loss(*args, eps=0.0)
    assert seq.item() == pytest.approx((2.5 * ln2 / 2 + 6 * ln2 / 1) / 2, rel=1e-6)  # 3.625 ln 2 = 2.51266
    assert seq.item() == pytest.approx(2.51266, abs=1e-5)
    tok, metrics = attention_loss(*args, eps=0.0, reduction="token_mean")
    assert tok.item() == pytest.approx((2.5 + 6) * ln2 / 3, rel=1e-6)  # 1.96392
    assert tok.item() == pytest.approx(1.96392, abs=1e-5)
    assert metrics["attn/content_tokens"] == 3
    with pytest.raises(ValueError, match="reduction='mean'"):
        attention_loss(*args, reduction="mean")


def test_attention_loss_advantage_floor_on_an_all_failed_group():
    # one group, both responses failed, GRPO advantages all 0: the floor alone gives the gate 0.02
    a = torch.tensor([[0.5, 0.25], [0.5, 0.25]], requires_grad=True)
    mask = torch.ones((2, 2))
    args = (a, mask, mask.bool(), torch.zeros((2, 2)), torch.zeros(2), torch.zeros(2))
    loss, metrics = attention_loss(*args, eps=0.0)
    # per row: 0.02 * (1/2 ln 2 + 1 * ln 4) / 2 content tokens; both rows equal, so that is also the mean
    expected = 0.02 * 2.5 * math.log(2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6) and expected == pytest.approx(0.0173287, abs=1e-7)
    assert metrics["attn/gate_mean"] == pytest.approx(0.02)
    loss.backward()
    assert a.grad[0, 1] == pytest.approx(-0.02 * 1.0 / 0.25 / 2 / 2, rel=1e-6)
    off, metrics = attention_loss(*args, eps=0.0, advantage_floor_eps=0.0)  # the option: no floor, no loss
    assert off.item() == 0.0 and metrics["attn/gate_mean"] == 0.0


def test_attention_loss_content_fallback():
    # row 0 has no content token: by default all its tokens count (v = 1 each with dh = 0), with "skip" it adds 0
    # row 0: T=2, a = (1/2, 1/4), gate 1: S_0 = 1/2 ln 2 + ln 4 = 2.5 ln 2 over N_0 = 2 (fallback) or 0 (skip)
    # row 1: T=3, content t=3, a_3 = 1/8, gate 2: S_1 = 2 ln 8 = 6 ln 2 over N_1 = 1
    a = torch.tensor([[0.5, 0.25, 0.9], [0.9, 0.9, 0.125]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    content = torch.tensor([[False, False, False], [False, False, True]])
    args = (a, mask, content, torch.zeros((2, 3)), torch.tensor([0.0, -1.0]), torch.tensor([1.0, 2.0]))
    ln2 = math.log(2)
    cases = {
        ("all_tokens", "seq_mean"): ((2.5 * ln2 / 2 + 6 * ln2) / 2, 3),  # 2.51266
        ("all_tokens", "token_mean"): ((2.5 + 6) * ln2 / 3, 3),  # 1.96392
        ("skip", "seq_mean"): ((0 + 6 * ln2) / 2, 1),  # 2.07944: row 0 still counts among the 2 rows
        ("skip", "token_mean"): (6 * ln2 / 1, 1),  # 4.15888
    }
    for (fallback, reduction), (expected, n_content) in cases.items():
        loss, metrics = attention_loss(*args, eps=0.0, reduction=reduction, content_fallback=fallback)
        assert loss.item() == pytest.approx(expected, rel=1e-6), (fallback, reduction)
        assert metrics["attn/content_tokens"] == n_content and metrics["attn/no_content_sequences"] == 1
    assert attention_loss(*args, eps=0.0)[0].item() == pytest.approx(2.51266, abs=1e-5)  # the default
    with pytest.raises(ValueError, match="content_fallback='none'"):
        attention_loss(*args, content_fallback="none")


def test_attention_loss_without_any_content_token():
    a = torch.full((1, 3), 0.3, requires_grad=True)
    mask = torch.ones((1, 3))
    args = (a, mask, torch.zeros((1, 3), dtype=torch.bool), torch.zeros((1, 3)), torch.zeros(1), torch.zeros(1))
    # default: all 3 tokens count, v = 1, gate = floor 0.02 (failed, A = 0): 0.02 (1/3 + 2/3 + 1) nll / 3
    nll = -math.log(0.3 + 1e-6)
    loss, metrics = attention_loss(*args)
    assert loss.item() == pytest.approx(0.02 * 2 * nll / 3, rel=1e-6)
    assert metrics["attn/content_tokens"] == 3 and metrics["attn/no_content_sequences"] == 1
    loss, metrics = attention_loss(*args, content_fallback="skip")  # the option: nothing to learn from
    assert loss.item() == 0.0 and metrics["attn/content_tokens"] == 0
    loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))
    none = torch.zeros((0, 3))  # a micro-batch without sequences: 0, not NaN
    assert attention_loss(none, none, none.bool(), none, torch.zeros(0), torch.zeros(0))[0].item() == 0.0


def test_attention_loss_defaults_are_the_config_defaults():
    import inspect

    from verl_modality.algorithms.config import MapoATConfig

    params = inspect.signature(attention_loss).parameters
    c = MapoATConfig()
    assert params["advantage_floor_eps"].default == c.advantage_floor_eps == 0.02
    assert params["reduction"].default == c.attn_loss_reduction == "seq_mean"
    assert params["content_fallback"].default == c.content_fallback == "all_tokens"
    assert (params["kappa"].default, params["tau_base"].default, params["c_mask"].default) == (
        c.kappa,
        c.tau_base,
        c.c_mask,
    )
    assert inspect.signature(sequence_gate).parameters["advantage_floor_eps"].default == 0.02
