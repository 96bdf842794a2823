"""Changes to ``verl.utils``: ``tokenizer.hf_processor`` builds the Omni processor of a known family,
``tensordict_utils.maybe_fix_3d_position_ids`` repacks equal-length multimodal position ids, and (``cpu`` platform)
``distributed``'s process-group functions use plain gloo. Each wrapper hands other calls to verl's function; each is
installed with :func:`verl_modality.integrations.patching.wrap`."""

from __future__ import annotations

import os
from datetime import timedelta

from verl_modality.integrations.patching import wrap


# -------------------------------------------------------------------------------------- verl.utils.tokenizer
def omni_hf_processor(original):
    """Wrap verl's ``hf_processor`` so Omni checkpoints get a configured processor; others are untouched."""
    from verl_modality.models.omni import is_omni_config, load_omni_processor

    def hf_processor(name_or_path, **kwargs):
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=kwargs.get("trust_remote_code", False))
        except Exception:  # not a model directory we can read: verl's own function decides
            return original(name_or_path, **kwargs)
        if not is_omni_config(config):
            return original(name_or_path, **kwargs)
        return load_omni_processor(name_or_path, config=config, **kwargs)

    return hf_processor


def patch_tokenizer(module) -> None:
    """``verl.utils.tokenizer.hf_processor`` and its re-export ``verl.utils.hf_processor`` (the same wrapper)."""
    import verl.utils as verl_utils

    wrap(module, "hf_processor", omni_hf_processor)
    if hasattr(verl_utils, "hf_processor"):  # else verl.utils is importing: its `from .tokenizer import` takes ours
        wrap(verl_utils, "hf_processor", omni_hf_processor)


# ------------------------------------------------------------------------------- verl.utils.tensordict_utils
def fixed_3d_position_ids(original):
    """verl's ``maybe_fix_3d_position_ids``, first repacking position ids nested along the wrong dimension
    (:func:`verl_modality.models.omni.repack_equal_length_position_ids`)."""
    from verl_modality.models.omni import repack_equal_length_position_ids

    def maybe_fix_3d_position_ids(data):
        if "position_ids" in data.keys():
            repacked = repack_equal_length_position_ids(data["position_ids"])
            if repacked is not None:
                data["position_ids"] = repacked
                return None
        return original(data)

    return maybe_fix_3d_position_ids


def patch_tensordict_utils(module) -> None:
    wrap(module, "maybe_fix_3d_position_ids", fixed_3d_position_ids)


# ------------------------------------------------------------------------------------ verl.utils.distributed
def gloo_process_group(original):
    """``initialize_global_process_group_ray`` with ``backend="gloo"`` unless one is given."""

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    return initialize_global_process_group_ray


def gloo_global_process_group(original):
    """``initialize_global_process_group`` of the torchrun entry points (verl's SFT trainer) with plain gloo."""

    def initialize_global_process_group(timeout_second=36000):
        import torch.distributed

        torch.distributed.init_process_group(
            backend="gloo",
            timeout=timedelta(seconds=timeout_second),
            init_method=os.environ.get("DIST_INIT_METHOD", None),
        )
        return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    return initialize_global_process_group


def patch_distributed(module) -> None:
    wrap(module, "initialize_global_process_group_ray", gloo_process_group)
    wrap(module, "initialize_global_process_group", gloo_global_process_group)
