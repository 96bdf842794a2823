"""Test-wide settings: offline, CPU platform, quiet Ray. Set before anything imports verl."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VERL_PLATFORM", "cpu")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """One tiny Qwen2.5-Omni checkpoint (seed 0) shared by the tests that only read it."""
    from verl_modality.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3_model_dir(tmp_path_factory):
    """One tiny Qwen3-Omni (MoE) checkpoint (seed 0) shared by the tests that only read it."""
    from verl_modality.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen3") / "model", seed=0, family="qwen3_omni")


@pytest.fixture(scope="session", params=["qwen2_5_omni", "qwen3_omni"])
def family_model_dir(request):
    """``(family name, tiny checkpoint dir)`` for each known family: tests that must hold for every family."""
    fixture = {"qwen2_5_omni": "tiny_model_dir", "qwen3_omni": "tiny_qwen3_model_dir"}[request.param]
    return request.param, request.getfixturevalue(fixture)
