import pytest
from omegaconf import OmegaConf

from verl_modality import TAGS
from verl_modality.algorithms.config import MapoConfig


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
    ],
)
def test_bad_options_name_the_key(options, match):
    with pytest.raises(ValueError, match=match):
        MapoConfig.from_algorithm_config({"mapo": options})
