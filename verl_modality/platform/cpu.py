"""A ``cpu`` platform for verl 0.9.1, which ships only accelerator platforms (nvidia, huawei, amd).

The platform is registered with verl's ``PlatformRegistry`` whenever the plugin loads, but it never wins verl's
auto-detection: it is used only when selected explicitly with ``VERL_PLATFORM=cpu`` (``trainer.device=cpu`` then
describes the same choice to the trainer). Only when it is selected does the plugin also (entries ``when=cpu`` of
:mod:`verl_modality.integrations.registry`):

* register verl's FSDP engines for ``device="cpu"`` (verl registers them for cuda/npu only;
  :func:`verl_modality.integrations.verl_registries.register_cpu_engines`), and
* make ``initialize_global_process_group_ray`` (Ray workers) and ``initialize_global_process_group`` (torchrun
  entry points such as verl's SFT trainer) use plain ``gloo`` (verl builds ``"cpu:gloo,cpu:gloo"`` from the
  platform, which torch rejects as a duplicate device type; :mod:`verl_modality.integrations.verl_utils`).

GPU runs therefore see exactly the registries and functions they see without the plugin.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any

PLATFORM_NAME = "cpu"
#: The Ray resource of one rank's slot on a node (see ``PlatformCPU.ray_resource_name``).
RANK_SLOT_RESOURCE = "GPU"


def is_selected() -> bool:
    """True when the user selected this platform with ``VERL_PLATFORM=cpu``."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil is a verl dependency; this only guards odd sandboxes
        return 0


def _build_device_module() -> types.ModuleType:
    """A ``torch.cuda``-shaped module for the CPU: what verl calls on ``get_torch_device()``."""
    import torch

    mod = types.ModuleType("verl_modality_cpu_device")
    cpu = torch.cpu

    def _noop(*args: Any, **kwargs: Any) -> None:
        return None

    def mem_get_info(device: Any = None) -> tuple[int, int]:
        try:
            import psutil

            vm = psutil.virtual_memory()
            return int(vm.available), int(vm.total)
        except Exception:
            return 0, 0

    attrs: dict[str, Any] = {
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "current_device": lambda: 0,
        "set_device": _noop,
        "synchronize": lambda device=None: cpu.synchronize(),
        "current_stream": cpu.current_stream,
        "stream": cpu.stream,
        "Stream": cpu.Stream,
        "Event": cpu.Event,
        "empty_cache": _noop,
        "ipc_collect": _noop,
        "reset_peak_memory_stats": _noop,
        "set_per_process_memory_fraction": _noop,
        "mem_get_info": mem_get_info,
        "memory_allocated": lambda device=None: _rss_bytes(),
        "max_memory_allocated": lambda device=None: _rss_bytes(),
        "memory_reserved": lambda device=None: _rss_bytes(),
        "max_memory_reserved": lambda device=None: _rss_bytes(),
        "get_device_name": lambda device=None: "cpu",
        "get_rng_state": lambda device=None: torch.get_rng_state(),
        "set_rng_state": lambda state, device=None: torch.set_rng_state(state),
        "manual_seed": torch.manual_seed,
        "manual_seed_all": torch.manual_seed,
        "is_initialized": lambda: True,
    }
    for name, value in attrs.items():
        setattr(mod, name, value)
    return mod


_PLATFORM_CLASS: type | None = None


def platform_class() -> type:
    """The ``cpu`` platform class, a subclass of verl's ``PlatformBase`` (built on first use: this module must not
    import verl at load time, since verl's plugin discovery imports it while verl itself is loading)."""
    global _PLATFORM_CLASS
    if _PLATFORM_CLASS is not None:
        return _PLATFORM_CLASS
    import torch
    from verl.plugin.platform.platform_base import PlatformBase

    class PlatformCPU(PlatformBase):
        """verl platform for CPU-only machines: gloo collectives, no device memory, one logical ``GPU`` Ray
        resource per rank slot of a node."""

        _device_module = _build_device_module()

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> types.ModuleType:
            return self._device_module

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            # Never chosen by auto-detection: only an explicit VERL_PLATFORM=cpu selects it.
            return False

        def current_device(self) -> str:  # type: ignore[override]
            # verl uses this as a device for ``.to(...)``/``device=``; the integer 0 would mean cuda:0.
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "VERL_MODALITY_CPU_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            # verl's placement-group bundles take one of this resource per rank: the rank slots each node declares
            # (`ray start --num-gpus`, `ray_kwargs.ray_init.num_gpus`, logical on a CPU machine), so that
            # trainer.n_gpus_per_node ranks land on each node as they do on GPUs; the workers themselves take a CPU
            # of their bundle and no GPU (ray_resource_options)
            return RANK_SLOT_RESOURCE

        def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
            # One "device" per worker is one logical CPU of the placement-group bundle (Ray rejects
            # resources={"CPU":..}).
            return {"num_cpus": num_gpus}

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    PlatformCPU.__qualname__ = "PlatformCPU"  # pickled by reference, as if defined at module level
    globals()["PlatformCPU"] = _PLATFORM_CLASS = PlatformCPU
    return PlatformCPU


def register_platform(module=None) -> type:
    """Register the ``cpu`` platform class with verl's registry (idempotent)."""
    from verl.plugin.platform.platform_manager import PlatformRegistry

    from verl_modality.integrations.patching import register

    cls = platform_class()
    # verl's own function would override another 'cpu' platform silently; register() refuses to
    register(PlatformRegistry._platforms, PLATFORM_NAME, cls, add=lambda: PlatformRegistry.register(PLATFORM_NAME)(cls))
    return cls
