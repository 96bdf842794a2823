import pytest
import torch

from verl_modality.rewards.contrastive import (
    ContrastiveConfig,
    NoDeficitError,
    contrastive_weighting,
    deficit_options,
    deficit_streams,
    negative_view,
    reweight_scores,
    shared_similarity,
)


def test_formula_by_hand():
    r = torch.tensor([0.5, 0.5, 0.5, 0.9, 0.0, 1.0])
    s = torch.tensor([0.2, 0.8, 0.9, 0.1, 0.1, 0.95])
    out = contrastive_weighting(r, s, alpha=0.5, tau=0.8)
    # boosted when s < tau: 0.5 * 1.5; s == tau is not boosted; 0.9 * 1.5 clips to 1; a zero reward stays zero
    torch.testing.assert_close(out, torch.tensor([0.75, 0.5, 0.5, 1.0, 0.0, 1.0]))
    assert contrastive_weighting(torch.tensor([1, 0]), torch.tensor([0.0, 0.0]), 0.2, 0.5).dtype == torch.float32
    torch.testing.assert_close(contrastive_weighting(r, s, alpha=0.0, tau=0.8), r)


def test_formula_nan_raises():
    with pytest.raises(ValueError, match="sim contains NaN"):
        contrastive_weighting(torch.tensor([0.5, 0.5]), torch.tensor([0.1, float("nan")]), 0.2, 0.8)
    with pytest.raises(ValueError, match="r_pos contains NaN"):
        contrastive_weighting(torch.tensor([float("nan")]), torch.tensor([0.1]), 0.2, 0.8)
    with pytest.raises(ValueError, match="finite"):
        contrastive_weighting(torch.tensor([0.5]), torch.tensor([0.1]), float("nan"), 0.8)


def test_deficit_options():
    assert deficit_options("VAS", "VAS") == ["V", "A", "S", "VA", "VS", "AS"]
    assert deficit_options("VAS", "VAS", "drop_one") == ["VA", "VS", "AS"]
    assert deficit_options("VA", "VA") == ["V", "A"]
    assert deficit_options("V", "VA") == ["A"]  # superset sample: the negative loses the required stream
    assert deficit_options("V", "VAS", "drop_one") == ["AS"]  # dropping A or S keeps V: not a deficit
    assert deficit_options("VA", "V") == []  # shown one stream only: nothing left to remove
    assert deficit_options("A", "A") == []


def test_deficit_streams():
    picks = {deficit_streams("VAS", "VAS", "any", seed=0, sample_id=f"clip{i}") for i in range(60)}
    assert picks == {"V", "A", "S", "VA", "VS", "AS"}  # every option is reachable
    assert deficit_streams("VAS", "VAS", "any", 0, "clip7") == deficit_streams("VAS", "VAS", "any", 0, "clip7")
    by_seed = [deficit_streams("VAS", "VAS", "any", seed, "clip7") for seed in range(20)]
    assert len(set(by_seed)) > 1
    assert deficit_streams("AS", "SA", "drop_one", 3, "x") in ("A", "S")
    for tag in ("V", "A", "S"):
        with pytest.raises(NoDeficitError, match="single-modality"):
            deficit_streams(tag, tag, "any", 0, "uni")
    with pytest.raises(ValueError, match="deficit='drop_two'"):
        deficit_streams("VA", "VA", "drop_two")
    with pytest.raises(ValueError, match="not one of"):
        deficit_streams("VX", "VA")


def test_negative_view():
    on = ContrastiveConfig(enable=True)
    assert negative_view("VA", "VA", "caption", "c1", on) in ("V", "A")
    assert negative_view("V", "V", "caption", "c1", on) is None  # uni-modal: CRW has no effect
    assert negative_view("VA", "VA", "qa", "q1", on) is None  # captions only
    assert negative_view("VA", "VA", "caption", "c1", ContrastiveConfig()) is None  # disabled by default


class FakeSimilarity:
    """Similarity by a fixed table of (a, b) pairs, recording its calls."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, a, b):
        self.calls.append((list(a), list(b)))
        return torch.tensor([self.table[(x, y)] for x, y in zip(a, b, strict=True)])


def test_reweight_scores_per_prompt():
    cfg = ContrastiveConfig(enable=True, alpha=0.5, tau=0.8)
    sim = FakeSimilarity({("p1", "n1"): 0.3, ("p2", "n1"): 0.9, ("q1", "n2"): 0.1, ("q2", "n2"): 0.8})
    scores = [0.4, 0.4, 0.8, 0.6, 0.5, 0.5]
    responses = ["p1", "p2", "q1", "q2", "u1", "u2"]
    new, metrics = reweight_scores(scores, responses, ["n1", "n2", None], sim, cfg)  # groups of 2, third uni-modal
    torch.testing.assert_close(new, torch.tensor([0.6, 0.4, 1.0, 0.6, 0.5, 0.5]))
    assert sim.calls == [(["p1", "p2", "q1", "q2"], ["n1", "n1", "n2", "n2"])]
    assert metrics["contrastive/applied_frac"] == pytest.approx(4 / 6)
    assert metrics["contrastive/boosted_frac"] == pytest.approx(0.5)
    assert metrics["contrastive/similarity_mean"] == pytest.approx((0.3 + 0.9 + 0.1 + 0.8) / 4)
    assert metrics["contrastive/reward_gain"] == pytest.approx((0.2 + 0.2) / 4)


def test_reweight_scores_per_response_and_by_group_id():
    cfg = ContrastiveConfig(enable=True, alpha=1.0, tau=0.5)
    sim = FakeSimilarity({("a", "x"): 0.4, ("b", "y"): 0.6})
    new, _ = reweight_scores(torch.tensor([0.3, 0.3]), ["a", "b"], ["x", "y"], sim, cfg)
    torch.testing.assert_close(new, torch.tensor([0.6, 0.3]))
    new, _ = reweight_scores([0.3, 0.3], ["a", "b"], {"g1": "x", "g2": "y"}, sim, cfg, group_ids=["g1", "g2"])
    torch.testing.assert_close(new, torch.tensor([0.6, 0.3]))
    with pytest.raises(KeyError, match="g3"):
        reweight_scores([0.3], ["a"], {"g1": "x"}, sim, cfg, group_ids=["g3"])


def test_reweight_scores_checks():
    cfg = ContrastiveConfig(enable=True)
    sim = FakeSimilarity({})
    with pytest.raises(ValueError, match="3 negatives for 4 responses"):
        reweight_scores([0.1] * 4, ["a"] * 4, ["n"] * 3, sim, cfg)
    with pytest.raises(ValueError, match="NaN"):
        reweight_scores([float("nan")], ["a"], [None], sim, cfg)
    with pytest.raises(ValueError, match="2 scores but 1 responses"):
        reweight_scores([0.1, 0.2], ["a"], ["n"], sim, cfg)
    out, metrics = reweight_scores([0.1, 0.2], ["a", "b"], ["n", "m"], sim, ContrastiveConfig())
    assert out.tolist() == pytest.approx([0.1, 0.2]) and metrics == {} and sim.calls == []
    out, metrics = reweight_scores([0.1], ["a"], [None], sim, cfg)
    assert out.tolist() == pytest.approx([0.1]) and metrics == {"contrastive/applied_frac": 0.0}


def test_config():
    cfg = ContrastiveConfig.from_config({"enable": True, "alpha": 0.3, "tau": 0.7, "similarity": "embedding"})
    assert (cfg.enable, cfg.alpha, cfg.tau, cfg.similarity) == (True, 0.3, 0.7, "embedding")
    assert ContrastiveConfig.from_config(None) == ContrastiveConfig()
    assert ContrastiveConfig().enable is False and ContrastiveConfig().similarity == "bertscore"
    sim = cfg.make_similarity()
    assert sim.backend == "embedding" and sim.encoder is None  # loads lazily
    assert shared_similarity(cfg) is shared_similarity(ContrastiveConfig(similarity="embedding", alpha=0.9))
    assert shared_similarity(cfg) is not shared_similarity(ContrastiveConfig())
    with pytest.raises(
        ValueError, match=r"unknown option\(s\) reward\.custom_reward_function\.reward_kwargs\.contrastive\.\['beta'\]"
    ):
        ContrastiveConfig.from_config({"beta": 1})
    with pytest.raises(ValueError, match=r"reward_kwargs\.contrastive\.alpha=-0\.1"):
        ContrastiveConfig(alpha=-0.1)
    with pytest.raises(ValueError, match=r"reward_kwargs\.contrastive\.similarity='rouge'"):
        ContrastiveConfig(similarity="rouge")
    with pytest.raises(ValueError, match=r"reward_kwargs\.contrastive\.tau=nan"):
        ContrastiveConfig(tau=float("nan"))
    with pytest.raises(ValueError, match=r"reward_kwargs\.contrastive\.batch_size='8': expected an integer >= 1"):
        ContrastiveConfig.from_config({"batch_size": "8"})
    with pytest.raises(ValueError, match=r"reward_kwargs\.contrastive\.baseline=1\.5: expected a finite number < 1"):
        ContrastiveConfig(baseline=1.5)
    with pytest.raises(ValueError, match=r"reward_kwargs\.contrastive\.model='': expected a path or null"):
        ContrastiveConfig(model="")
