"""Pieces of integrations/verl_workers.py that hold at any world size."""

import pytest
from verl.utils import tensordict_utils as tu

from verl_modality.integrations.verl_workers import attention_loss_share


@pytest.mark.parametrize(("dp_size", "local"), [(1, [8]), (2, [4, 4]), (2, [3, 5]), (4, [1, 2, 2, 3])])
def test_attention_loss_shares_add_up_to_the_global_mean_after_fsdp_averages_the_ranks(dp_size, local):
    """Each rank's L_attn weight, averaged over the ranks as FSDP averages gradients, gives every sequence of the
    global mini-batch (8 sequences) the weight 1/8, whatever the split (a per-rank mean would weigh 3 and 5 unequally)."""
    per_sequence = []
    for n in local:
        data = tu.get_tensordict({"x": list(range(n))})
        tu.assign_non_tensor(data, global_batch_size=8, dp_size=dp_size)
        per_sequence += [attention_loss_share(data, n) / n / dp_size] * n
    assert per_sequence == pytest.approx([1 / 8] * 8)


def test_attention_loss_share_without_batch_info_is_the_micro_batch_mean():
    assert attention_loss_share(tu.get_tensordict({"x": [1, 2]}), 2) == 1.0
