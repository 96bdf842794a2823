"""Pieces of integrations/verl_workers.py that hold at any world size."""

import pytest
from verl.utils import tensordict_utils as tu

from verl_modality.integrations.verl_workers import attention_loss_share


@pytest.mark.parametrize(("dp_size", "local"), [(1, [8]), (2, [4, 4]), (2, [3, 5]), (4, [1, 2, 2, 3])])
def test_attention_loss_shares_add_up_to_the_global_mean_after_fsdp_averages_the_ranks(dp_size, local):
    """Each rank's L_attn weight, averaged over the ranks as FSDP averages gradients, gives every sequence of the
    global mini-batch (8 sequences) the weight 1/8, whatever the split (a per-rank mean would weigh 3 and 5
    unequally)."""
    per_sequence = []
    for n in local:
        data = tu.get_tensordict({"x": list(range(n))})
        tu.assign_non_tensor(data, global_batch_size=8, dp_size=dp_size)
        per_sequence += [attention_loss_share(data, n) / n / dp_size] * n
    assert per_sequence == pytest.approx([1 / 8] * 8)


def test_attention_loss_share_without_batch_info_is_the_micro_batch_mean():
    assert attention_loss_share(tu.get_tensordict({"x": [1, 2]}), 2) == 1.0


def test_attention_loss_without_a_captured_forward_step_raises_instead_of_adding_nothing():
    """The captured q/k reach the loss through the ContextVar ``verl_workers._ACTIVE`` (verl_modality.protocol): a
    loss that must add L_attn but finds no capture (the forward_step patch missing) fails loudly."""
    import torch

    from verl_modality import protocol
    from verl_modality.integrations import verl_workers as vw

    def ppo_loss(config, model_output, data, dp_group=None):
        return torch.tensor(1.0), {}

    loss_fn = vw.with_mapo_at(ppo_loss)
    plain = tu.get_tensordict({"x": torch.zeros(2, 3)})
    assert loss_fn(None, None, plain)[0] == 1.0  # no knob: verl's loss, untouched
    knob = tu.get_tensordict({"x": torch.zeros(2, 3)})
    tu.assign_non_tensor(knob, **{protocol.MAPO_AT: {"eta": 1.0, "layers": [-1]}})
    assert vw._ACTIVE.get() is None
    with pytest.raises(RuntimeError, match="outside a captured forward step"):
        loss_fn(None, None, knob)
    token = vw._ACTIVE.set(vw.NO_CAPTURE)  # what forward_step sets for a forward-only (log-prob) pass
    try:
        assert loss_fn(None, None, knob)[0] == 1.0
    finally:
        vw._ACTIVE.reset(token)
