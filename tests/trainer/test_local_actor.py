"""Each family's thinker inside verl's own actor on the CPU, fed by our dataset code (Qwen2.5-Omni, Qwen3-Omni MoE)."""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory, family_model_dir):
    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.trainer.actor_check import build_demo_batch, load_rows

    _, model_dir = family_model_dir
    root = tmp_path_factory.mktemp("actor")
    make_demo_data(root / "data", seed=0, n_train=14, n_test=0, progress=False)
    rows, processor, tokenizer = load_rows(root / "data" / "train.parquet", model_dir, 4)
    return model_dir, rows, processor, tokenizer, build_demo_batch(rows, processor, tokenizer, seed=0)


def test_batch_carries_audio_and_video(demo_setup):
    _, rows, processor, _, demo = demo_setup
    mm = demo.batch["multi_modal_inputs"]
    ids = demo.batch["input_ids"]
    assert any("input_features" in m for m in mm) and any("pixel_values_videos" in m for m in mm)
    for i, m in enumerate(mm):
        n_audio = int((ids[i] == processor.audio_token_id).sum())
        n_video = int((ids[i] == processor.video_token_id).sum())
        if "feature_attention_mask" in m:
            assert n_audio > 0
        if "video_grid_thw" in m:
            assert n_video == int(m["video_grid_thw"].prod(-1).sum()) // 4
    assert demo.batch["position_ids"].shape == (8, 4, ids.shape[1])


def test_actor_log_probs_match_transformers_and_update_moves_every_part(demo_setup, family_model_dir):
    from verl_modality.models.family import family_named
    from verl_modality.models.omni import load_thinker
    from verl_modality.trainer.actor_check import COMPONENTS, changed_by_component, grpo_advantages, snapshot
    from verl_modality.trainer.local_actor import LocalActor

    model_dir, rows, processor, tokenizer, demo = demo_setup
    batch = demo.batch
    actor = LocalActor.create(model_dir, mini_batch_size=8, micro_batch_size=2, lr=1e-2)
    # The actor loaded the thinker (not the full model with talker) from the full checkpoint.
    family = family_named(family_model_dir[0])
    assert actor.model_config.hf_config.model_type == family.thinker_model_type
    assert type(actor.module).__name__.endswith(family.thinker_class_name)
    log_probs = actor.compute_log_prob(batch)["log_probs"]

    # Reference: a plain transformers forward of each unpadded sequence; the model computes its own
    # multimodal RoPE positions here, so this also checks the positions we hand to verl.
    model = load_thinker(str(model_dir)).eval()
    mask = batch["response_mask"].bool()
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        ids = batch["input_ids"][i][keep].unsqueeze(0)
        mm = batch["multi_modal_inputs"][i]
        mm = mm.data if hasattr(mm, "data") else mm
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **mm).logits[0].float()
        n_resp = int(mask[i].sum())
        resp = ids[0, -n_resp:]
        ref = torch.log_softmax(logits[-n_resp - 1 : -1], -1).gather(-1, resp[:, None])[:, 0]
        torch.testing.assert_close(log_probs[i][mask[i]], ref, atol=1e-5, rtol=0)

    before = snapshot(actor.module)
    batch["old_log_probs"] = log_probs
    batch["advantages"] = grpo_advantages(demo.scores, batch["response_mask"], demo.uids)
    assert batch["advantages"].abs().sum() > 0
    metrics = actor.update(batch)
    assert "actor/pg_loss" in metrics and "grad_norm" in metrics
    changed = changed_by_component(before, snapshot(actor.module))
    for part in COMPONENTS:
        assert changed[part]["changed"] > 0, changed
    after = actor.compute_log_prob(batch)["log_probs"]
    lp = lambda t: (t * mask).sum(-1) / mask.sum(-1)  # noqa: E731
    # GRPO pushed the correct answers up relative to the wrong ones.
    gain = lp(after) - lp(log_probs)
    assert gain[demo.correct].mean() > gain[~demo.correct].mean()
