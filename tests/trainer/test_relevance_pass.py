"""The audio-ablated trajectories of MAPO-AT's extra pass, built from dataset items as verl stores them."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from verl_modality.data import schema
from verl_modality.data.dataset import OmniRLDataset
from verl_modality.models.omni import load_omni_processor, placeholder_token_ids
from verl_modality.trainer.relevance_pass import ROW_FIELDS, twin_trajectory


@pytest.fixture(scope="module")
def items(tmp_path_factory, tiny_model_dir):
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("relevance")
    make_demo_data(root, seed=0, n_train=7, n_test=0, progress=False)
    processor = load_omni_processor(str(tiny_model_dir))
    cfg = OmegaConf.create({"filter_overlong_prompts": False, "modality": {"policy": "full"}})
    ds = OmniRLDataset(
        data_files=[str(root / "train.parquet")], tokenizer=processor.tokenizer, processor=processor, config=cfg
    )
    return processor, [ds[i] for i in range(len(ds))]


def test_twin_trajectory_drops_the_audio_and_keeps_the_response(items):
    processor, rows = items
    ids = placeholder_token_ids(processor.tokenizer)
    row = {f: rows[0][f] for f in ROW_FIELDS}  # what the trainer reads back from TransferQueue
    assert schema.AUDIOS not in row
    response = [5, 6, 7]
    mask = torch.ones(3, dtype=torch.long)
    cache: dict = {}
    twin = twin_trajectory(row, response, mask, processor, cache=cache)
    same = twin_trajectory(row, response, mask, processor, cache=cache, drop="")
    assert ids["audio"] not in twin["prompts"].tolist() and ids["audio"] in same["prompts"].tolist()
    assert ids["video"] in twin["prompts"].tolist()
    for t in (twin, same):
        n = t["prompts"].numel()
        assert t["input_ids"][n:].tolist() == response
        assert t["position_ids"].shape == (4, n + 3)
        assert torch.equal(t["response_mask"], mask) and torch.equal(t["loss_mask"], mask)
    assert len(cache) == 2
    blank = twin_trajectory(row, response, mask, processor, ablation="blank")
    assert torch.equal(blank["prompts"], same["prompts"])  # silence keeps every position
    assert not torch.equal(blank["multi_modal_inputs"]["input_features"], same["multi_modal_inputs"]["input_features"])
