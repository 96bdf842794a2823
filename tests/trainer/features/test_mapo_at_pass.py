"""MAPO-AT's trainer feature: option checks, the audio-ablated pass against a stand-in actor, the attention loss's
inputs, and the settings the actor reads."""

import pytest
import torch
from memory_store import MemoryStore
from omegaconf import OmegaConf

from verl_modality.algorithms.relevance import relevance_weights
from verl_modality.data import schema
from verl_modality.models.omni import load_omni_processor, placeholder_token_ids
from verl_modality.trainer import relevance_pass as rp
from verl_modality.trainer.features.mapo_at_pass import MapoATPass


def _cfg(loss_mode="mapo_relevance", rollout_is=None, **mapo_at):
    return OmegaConf.create(
        {
            "algorithm": {"mapo_at": mapo_at, "rollout_correction": {"rollout_is": rollout_is}},
            "actor_rollout_ref": {"actor": {"policy_loss": {"loss_mode": loss_mode}}},
        }
    )


def test_options_are_checked_against_the_policy_loss():
    assert MapoATPass(_cfg("vanilla")).labels == [] and not MapoATPass(_cfg("vanilla")).enabled
    assert MapoATPass(_cfg(relevance_mask=True)).labels == ["MAPO-AT"]
    with pytest.raises(ValueError, match="needs actor_rollout_ref.actor.policy_loss.loss_mode=mapo_relevance"):
        MapoATPass(_cfg("vanilla", relevance_mask=True))
    with pytest.raises(ValueError, match="and the other way round"):
        MapoATPass(_cfg("mapo_relevance"))
    with pytest.raises(ValueError, match="cannot be combined with algorithm.rollout_correction.rollout_is"):
        MapoATPass(_cfg(rollout_is="token", relevance_mask=True))
    with pytest.raises(ValueError, match="algorithm.mapo_at.eta"):
        MapoATPass(_cfg("vanilla", attention_loss=True, eta=0))


@pytest.fixture(scope="module")
def step_rows(tmp_path_factory, tiny_model_dir):
    from verl_modality.data.dataset import OmniRLDataset
    from verl_modality.data.synthetic import make_demo_data

    root = tmp_path_factory.mktemp("mapo_at_pass")
    make_demo_data(root, seed=0, n_train=4, n_test=0, progress=False)
    processor = load_omni_processor(str(tiny_model_dir))
    cfg = OmegaConf.create({"filter_overlong_prompts": False, "modality": {"policy": "full"}})
    ds = OmniRLDataset(
        data_files=[str(root / "train.parquet")], tokenizer=processor.tokenizer, processor=processor, config=cfg
    )
    return processor, [{f: ds[i][f] for f in rp.ROW_FIELDS} for i in range(len(ds))]


def test_relevance_pass_scores_twins_without_audio_and_writes_the_weights(step_rows):
    processor, rows = step_rows
    audio_id = placeholder_token_ids(processor.tokenizer)["audio"]
    rows = [dict(r) for r in rows]
    rows[1][schema.AVAILABLE] = "VS"  # a row shown without audio: dh stays 0, uniform weights
    assert all("A" in str(r[schema.AVAILABLE]) for i, r in enumerate(rows) if i != 1)
    lengths = [3, 5, 2, 4]
    h_full = [1.0 + 0.25 * torch.arange(n, dtype=torch.float32) for n in lengths]
    store = MemoryStore()
    batch = store.add(
        "train",
        [
            {
                **row,
                "group": f"g{i // 2}",
                "responses": torch.arange(10, 10 + n),
                "response_mask": torch.ones(n, dtype=torch.long),
                "entropy": h,
            }
            for i, (row, n, h) in enumerate(zip(rows, lengths, h_full, strict=True))
        ],
    )
    seen = {}

    def compute_log_prob(meta):  # the actor's old-policy pass, writing entropies over prompt + response
        seen["meta"] = meta
        twins = store.partitions[meta.partition_id]
        values = [
            torch.full((twins[k]["input_ids"].numel(),), 1.0 if audio_id in twins[k]["input_ids"] else 3.0)
            for k in meta.keys
        ]
        store.kv_batch_put(
            meta.keys, meta.partition_id, {"entropy": torch.nested.as_nested_tensor(values, layout=torch.jagged)}
        )

    feature = MapoATPass(_cfg(relevance_mask=True, attention_loss=True, tau_base=0.5))
    metrics = feature.relevance_pass(store, batch, compute_log_prob, processor, processor.tokenizer, None, 0.7)
    meta = seen["meta"]
    assert meta.partition_id == rp.TWIN_PARTITION and meta.keys == batch.keys
    assert meta.extra_info == {"calculate_entropy": True, "compute_loss": False, "temperature": 0.7}
    assert not store.partitions[rp.TWIN_PARTITION]  # the twins are cleared after the pass
    stored = store.partitions["train"]
    # dh = H(without audio) - H(full): 3 - h for rows with audio, 0 for the row shown without it
    want_dh = [torch.zeros(n) if i == 1 else 3.0 - h for i, (n, h) in enumerate(zip(lengths, h_full, strict=True))]
    for key, dh in zip(batch.keys, want_dh, strict=True):
        assert torch.allclose(stored[key]["mapo_dh"], dh)
    padded = torch.nested.as_nested_tensor(want_dh, layout=torch.jagged).to_padded_tensor(0.0)
    mask = torch.nested.as_nested_tensor([torch.ones(n) for n in lengths], layout=torch.jagged).to_padded_tensor(0.0)
    weights = relevance_weights(padded, mask, 0.5, feature.config.c_mask)
    for i, key in enumerate(batch.keys):
        assert torch.allclose(stored[key]["rollout_is_weights"], weights[i, : lengths[i]])
    assert torch.allclose(stored[batch.keys[1]]["rollout_is_weights"], torch.ones(5))
    assert stored[batch.keys[0]]["mapo_attn_content"].shape == (3,)
    assert metrics["mapo_at/audio_fraction"] == 0.75


def test_relevance_pass_without_any_audio_skips_the_actor(step_rows):
    processor, rows = step_rows
    store = MemoryStore()
    batch = store.add(
        "train",
        [
            {
                **r,
                schema.AVAILABLE: "VS",
                "responses": torch.arange(3),
                "response_mask": torch.ones(3, dtype=torch.long),
                "entropy": torch.ones(3),
            }
            for r in rows[:2]
        ],
    )
    feature = MapoATPass(_cfg(relevance_mask=True))

    def no_actor(meta):
        raise AssertionError("no twin to score")

    metrics = feature.relevance_pass(store, batch, no_actor, processor, processor.tokenizer, None, 1.0)
    assert metrics["mapo_at/audio_fraction"] == 0.0
    assert all(torch.equal(store.partitions["train"][k]["rollout_is_weights"], torch.ones(3)) for k in batch.keys)
    assert "mapo_dh" not in store.partitions["train"][batch.keys[0]]  # the attention loss is off


def test_attention_loss_inputs_repeat_reward_and_abs_advantage_over_tokens():
    store = MemoryStore()
    batch = store.add(
        "train",
        [
            {
                "rm_scores": torch.tensor([0.0, 1.0]),
                "advantages": torch.tensor([-0.5, -0.5]),
                "response_mask": torch.ones(2),
            },
            {
                "rm_scores": torch.tensor([0.0, 0.0, 0.0]),
                "advantages": torch.tensor([0.25, 0.25, 0.25]),
                "response_mask": torch.ones(3),
            },
        ],
    )
    meta = MapoATPass(_cfg("vanilla", attention_loss=True)).attention_loss_inputs(store, batch)
    assert {"mapo_attn_reward", "mapo_attn_adv"} <= set(meta.fields)
    stored = store.partitions["train"]
    assert stored[batch.keys[0]]["mapo_attn_reward"].tolist() == [1.0, 1.0]
    assert stored[batch.keys[0]]["mapo_attn_adv"].tolist() == [0.5, 0.5]
    assert stored[batch.keys[1]]["mapo_attn_adv"].tolist() == [0.25] * 3


def test_actor_settings_carry_the_options_and_the_audio_token(tiny_model_dir):
    tokenizer = load_omni_processor(str(tiny_model_dir)).tokenizer
    settings = MapoATPass(_cfg("vanilla", attention_loss=True, eta=0.1, layers=[-1])).actor_settings(tokenizer)
    assert settings == {
        "layers": [-1],
        "eta": 0.1,
        "kappa": 1.0,
        "tau_base": 1.0,
        "c_mask": 5.0,
        "audio_token_id": placeholder_token_ids(tokenizer)["audio"],
        "loss_options": {"advantage_floor_eps": 0.02, "reduction": "seq_mean", "content_fallback": "all_tokens"},
    }
    other = {"advantage_floor_eps": 0.0, "attn_loss_reduction": "token_mean", "content_fallback": "skip"}
    settings = MapoATPass(_cfg("vanilla", attention_loss=True, **other)).actor_settings(tokenizer)
    assert settings["loss_options"] == {
        "advantage_floor_eps": 0.0,
        "reduction": "token_mean",
        "content_fallback": "skip",
    }
