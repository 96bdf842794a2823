"""verl's fix for nested multimodal RoPE ids breaks batches whose rows all have the same length; ours repacks them."""

import pytest
import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from verl_modality.models.omni import repack_equal_length_position_ids


def _batch(lengths):
    """Rows of (4, L) position ids packed as TransferQueue packs them, plus a 1-D ragged field."""
    rows = [torch.arange(4 * n).reshape(4, n) + 100 * i for i, n in enumerate(lengths)]
    td = TensorDict(
        {
            "position_ids": torch.nested.as_nested_tensor(rows, layout=torch.jagged),
            "input_ids": torch.nested.as_nested_tensor([r[0] for r in rows], layout=torch.jagged),
        },
        batch_size=[len(rows)],
    )
    return td, rows


def test_original_fix_breaks_equal_length_batches():
    td, _ = _batch([6, 6, 6, 6])
    assert td["position_ids"]._ragged_idx == 1  # torch picked the 4 as the ragged dimension
    tu.maybe_fix_3d_position_ids.__wrapped__(td)
    with pytest.raises(RuntimeError):  # torch: split_with_sizes / "Expected cond to be True"
        tu.index_select_tensor_dict(td, torch.tensor([0, 2]))


@pytest.mark.parametrize("lengths", [[6, 6, 6, 6], [5], [4, 4], [3, 7, 5]])
def test_patched_fix_gives_the_rows_back(lengths):
    td, rows = _batch(lengths)
    tu.maybe_fix_3d_position_ids(td)  # the plugin's version (installed at import)
    pos = td["position_ids"]
    assert pos._ragged_idx == 2
    assert [torch.equal(a, b) for a, b in zip(pos.unbind(), rows, strict=True)] == [True] * len(rows)
    picked = tu.index_select_tensor_dict(td, torch.tensor([len(rows) - 1, 0]))
    assert torch.equal(picked["position_ids"].unbind()[0], rows[-1])


def test_ragged_batches_are_left_to_verl():
    td, _ = _batch([3, 7, 5])
    assert repack_equal_length_position_ids(td["position_ids"]) is None
    assert repack_equal_length_position_ids(torch.zeros(2, 4, 5)) is None  # dense: not ours to touch


def test_modules_that_imported_the_name_get_the_fix():
    from verl.workers import engine_workers
    from verl.workers.engine import base

    assert engine_workers.maybe_fix_3d_position_ids is tu.maybe_fix_3d_position_ids
    assert base.maybe_fix_3d_position_ids is tu.maybe_fix_3d_position_ids
    assert tu.maybe_fix_3d_position_ids.__verl_modality__
