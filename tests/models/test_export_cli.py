"""``verl-modality export`` on checkpoints written by hand (plain tensors, one rank): the model folder it writes, and a
base that does not match the checkpoint. World-size-2 checkpoints of a real run: tests/trainer/test_data_parallel.py."""

import torch

from verl_modality import cli
from verl_modality.models.omni import load_thinker


def _checkpoint(path, state):
    (path / "actor").mkdir(parents=True)
    torch.save(state, path / "actor" / "model_world_size_1_rank_0.pt")
    return path


def test_export_writes_the_checkpoints_weights_into_a_copy_of_the_base(tiny_model_dir, tmp_path, capsys):
    state = {k: v + 1.0 for k, v in load_thinker(tiny_model_dir).state_dict().items()}
    step = _checkpoint(tmp_path / "global_step_3", state)
    assert (
        cli.main(["export", "--checkpoint", str(step), "--base", str(tiny_model_dir), "--out", str(tmp_path / "m")])
        == 0
    )
    assert "(world size 1)" in capsys.readouterr().out
    exported = load_thinker(tmp_path / "m").state_dict()
    assert all(torch.equal(exported[k], state[k]) for k in state)


def test_export_with_a_base_that_does_not_match_names_it_in_one_line(tiny_model_dir, tmp_path, capsys):
    state = dict(load_thinker(tiny_model_dir).state_dict())
    state["model.extra.weight"] = torch.zeros(1)
    step = _checkpoint(tmp_path / "global_step_1", state)
    argv = ["export", "--checkpoint", str(step), "--base", str(tiny_model_dir), "--out", str(tmp_path / "m")]
    capsys.readouterr()  # the loading above printed its progress
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"export: --base {tiny_model_dir} does not match the checkpoint")
    assert not (tmp_path / "m").exists()
