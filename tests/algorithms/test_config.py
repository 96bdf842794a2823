import pytest
from omegaconf import OmegaConf

from verl_modality.algorithms.config import MapoConfig
from verl_modality.vocabulary import TAGS


def test_defaults_follow_the_paper():
    cfg = MapoConfig()
    assert cfg.balance and not cfg.adaptive_weights and cfg.history == "global" and cfg.difficulty == "auto"
    assert cfg.target_accuracy == 100 / 101 and (cfg.beta_a, cfg.beta_b, cfg.bins) == (100.0, 1.0, 50)
    assert cfg.tags == TAGS


def test_from_algorithm_config():
    algo = OmegaConf.create({"adv_estimator": "mapo_stratified", "mapo": {"adaptive_weights": True, "tags": ["V"]}})
    cfg = MapoConfig.from_algorithm_config(algo)
    assert cfg.adaptive_weights and cfg.tags == ("V",)
    assert MapoConfig.from_algorithm_config(None) == MapoConfig()
    assert MapoConfig.from_algorithm_config({"gamma": 1.0}) == MapoConfig()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"histroy": "global"}, r"unknown option\(s\) algorithm.mapo.\['histroy'\]"),
        ({"history": "foo"}, r"algorithm.mapo.history='foo'"),
        ({"difficulty": "x"}, r"algorithm.mapo.difficulty='x'"),
        ({"history_window": 0}, r"history_window=0"),
        ({"target_accuracy": 1.0}, r"target_accuracy=1.0"),
        ({"balance": "yes"}, r"algorithm.mapo.balance='yes': expected true or false"),
        ({"adaptive_weights": 1}, r"algorithm.mapo.adaptive_weights=1"),
        ({"bins": 2.5}, r"algorithm.mapo.bins=2.5"),
        ({"history_window": True}, r"algorithm.mapo.history_window=True"),
        ({"eps": "1e-6"}, r"algorithm.mapo.eps='1e-6'"),
        ({"beta_a": 0}, r"algorithm.mapo.beta_a=0"),
        ({"tags": ["V", "V"]}, r"algorithm.mapo.tags=\['V', 'V'\]"),
        ({"tags": []}, r"algorithm.mapo.tags=\[\]"),
    ],
)
def test_bad_options_name_the_key(options, match):
    with pytest.raises(ValueError, match=match):
        MapoConfig.from_algorithm_config({"mapo": options})


def test_values_are_normalised_to_plain_python():
    import json

    import numpy as np

    algo = OmegaConf.create({"mapo": {"history_window": 12, "tags": ["V", "A"], "eps": 1e-8}})
    cfg = MapoConfig.from_algorithm_config(algo)
    assert cfg.history_window == 12 and cfg.tags == ("V", "A") and cfg.eps == 1e-8
    cfg = MapoConfig(history_window=np.int64(5), bins=np.int32(20), beta_a=np.float32(50))
    assert type(cfg.history_window) is int and type(cfg.bins) is int and type(cfg.beta_a) is float
    json.dumps(cfg.__dict__)


def test_mapo_at_defaults_follow_the_release_and_bad_values_raise():
    from omegaconf import OmegaConf

    from verl_modality.algorithms.config import MapoATConfig

    c = MapoATConfig()
    assert (c.tau_base, c.c_mask, c.eta, c.kappa, c.layers) == (1.0, 5.0, 0.05, 1.0, (-3, -2, -1))  # docs/method.md §5
    assert not c.enabled
    cfg = OmegaConf.create({"mapo_at": {"relevance_mask": True, "c_mask": 3, "layers": [-1]}})
    c = MapoATConfig.from_algorithm_config(cfg)
    assert c.enabled and c.c_mask == 3.0 and c.layers == (-1,)
    with pytest.raises(ValueError, match=r"algorithm.mapo_at.c_mask=0"):
        MapoATConfig(c_mask=0)
    with pytest.raises(ValueError, match="ablation='mute'"):
        MapoATConfig(ablation="mute")
    with pytest.raises(ValueError, match=r"unknown option\(s\) algorithm.mapo_at.\['eta2'\]"):
        MapoATConfig.from_algorithm_config(OmegaConf.create({"mapo_at": {"eta2": 1}}))


def test_mapo_at_attention_loss_details_default_to_the_release():
    from omegaconf import OmegaConf

    from verl_modality.algorithms.config import MapoATConfig

    c = MapoATConfig()  # docs/method.md §5: floor 0.02, per-sequence reduction, every token when no content token
    assert (c.advantage_floor_eps, c.attn_loss_reduction, c.content_fallback) == (0.02, "seq_mean", "all_tokens")
    other = {"advantage_floor_eps": 0, "attn_loss_reduction": "token_mean", "content_fallback": "skip"}
    c = MapoATConfig.from_algorithm_config(OmegaConf.create({"mapo_at": other}))
    assert (c.advantage_floor_eps, c.attn_loss_reduction, c.content_fallback) == (0.0, "token_mean", "skip")
    assert type(c.advantage_floor_eps) is float
    for key, bad, message in (
        ("advantage_floor_eps", -0.1, r"algorithm.mapo_at.advantage_floor_eps=-0.1: expected a finite number >= 0"),
        ("advantage_floor_eps", "0.02", r"algorithm.mapo_at.advantage_floor_eps='0.02'"),
        ("attn_loss_reduction", "mean", r"algorithm.mapo_at.attn_loss_reduction='mean': expected one of"),
        ("content_fallback", "none", r"algorithm.mapo_at.content_fallback='none': expected one of"),
    ):
        with pytest.raises(ValueError, match=message):
            MapoATConfig.from_algorithm_config({"mapo_at": {key: bad}})
