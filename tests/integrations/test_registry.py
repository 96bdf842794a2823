"""The integration registry: entries as data, applied once on their target's import, with a state per entry."""

import sys
import uuid

import pytest

from verl_modality.integrations import registry
from verl_modality.integrations.registry import INTEGRATIONS, Integration


def test_every_entry_names_an_importable_function_and_a_unique_name():
    assert len({i.name for i in INTEGRATIONS}) == len(INTEGRATIONS)
    assert len({(i.target, i.apply) for i in INTEGRATIONS}) == len(INTEGRATIONS)
    for item in INTEGRATIONS:
        assert callable(registry.resolve(item)), item.apply
        assert item.why and item.attributes


def test_bad_entries_are_refused():
    attrs = (("m", "a"),)
    with pytest.raises(ValueError, match="bad when"):
        Integration("x", "patches", "patch", "m", attrs, "mod:fn", "sometimes", "why")
    with pytest.raises(ValueError, match="bad when"):
        Integration("x", "patches", "patch", "m", attrs, "mod.fn", "always", "why")
    with pytest.raises(ValueError, match="no comma"):  # VERL_MODALITY_DISABLE could not name it
        Integration("x, y", "patches", "patch", "m", attrs, "mod:fn", "always", "why")
    with pytest.raises(ValueError, match="attributes must be"):  # free text is not an attribute path
        Integration("x", "patches", "patch", "m", (("m", "its logger (a filter)"),), "mod:fn", "always", "why")
    with pytest.raises(ValueError, match="replaces"):
        Integration("x", "patches", "patch", "m", attrs, "mod:fn", "always", "why", replaces="m:a")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A target module (not yet imported) and a patch module whose ``apply`` counts its calls."""
    key = uuid.uuid4().hex[:8]
    target, patches = f"vm_target_{key}", f"vm_patches_{key}"
    (tmp_path / f"{target}.py").write_text("def f():\n    return 'original'\n")
    (tmp_path / f"{patches}.py").write_text(
        "from verl_modality.integrations.patching import wrap\n"
        "calls = []\n"
        "def patched(original):\n"
        "    return lambda: 'patched ' + original()\n"
        "def apply(module):\n"
        "    calls.append(module.__name__)\n"
        "    wrap(module, 'f', patched)\n"
        "def broken(module):\n"
        "    raise RuntimeError('no such attribute in this verl')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield target, patches
    for name in (target, patches):
        sys.modules.pop(name, None)


def _entry(target, patches, fn="apply", when="always"):
    return Integration(
        f"test {target} {fn} {when}", "patches", "patch", target, ((target, "f"),), f"{patches}:{fn}", when, "test"
    )


def test_applied_once_when_its_target_is_imported(fake):
    target, patches = fake
    item = _entry(target, patches)
    assert registry.status(item) == "not installed"
    assert registry.install((item,)) == [item]
    assert patches not in sys.modules  # the patch's own module is imported only with its target
    assert registry.status(item) == f"waiting for {target}"
    mod = __import__(target)
    assert mod.f() == "patched original"
    assert registry.status(item) == "applied"
    assert registry.install((item,)) == [item]  # idempotent: no second hook
    assert sys.modules[patches].calls == [target]


def test_target_already_imported_is_patched_at_once_and_the_doctor_imports_waiting_targets(fake):
    target, patches = fake
    first, second = (
        _entry(target, patches),
        _entry(target, patches, when="always").__class__(
            f"second {target}", "patches", "patch", target, ((target, "f"),), f"{patches}:apply", "always", "test"
        ),
    )
    registry.install((first,))
    assert registry.status(first, import_target=True) == "applied"  # imported the target to check
    registry.install((second,))  # the target is imported now: applied at once, and idempotent
    assert registry.status(second) == "applied"
    assert sys.modules[target].f() == "patched original"


def test_cpu_entries_do_not_apply_without_the_cpu_platform(fake, monkeypatch):
    target, patches = fake
    item = _entry(target, patches, when="cpu")
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    assert registry.install((item,)) == []
    assert registry.status(item) == "not applicable (when=cpu)"
    assert __import__(target).f() == "original"


def test_a_failing_patch_is_loud_and_recorded_but_leaves_the_import_alone(fake, capsys, monkeypatch):
    target, patches = fake
    monkeypatch.setattr(registry, "LOAD_ERRORS", [])
    item = _entry(target, patches, fn="broken")
    registry.install((item,))
    assert __import__(target).f() == "original"  # the target imports as it is
    assert registry.status(item) == "error: RuntimeError: no such attribute in this verl"
    err = capsys.readouterr().err
    assert registry.FAILURE in err and f"integration {item.name!r} on {target}" in err and "no such attribute" in err
    assert len(registry.LOAD_ERRORS) == 1 and "RuntimeError" in registry.LOAD_ERRORS[0]


def test_waiting_target_that_cannot_be_imported_says_so(fake):
    _, patches = fake
    item = _entry(f"vm_missing_{uuid.uuid4().hex[:8]}", patches)
    registry.install((item,))
    assert registry.status(item, import_target=True).startswith(f"waiting for {item.target} (cannot import here")


def test_every_entry_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "integrations.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| ") for line in doc.splitlines() if line.startswith("| ")}
    missing = [i.name for i in INTEGRATIONS if i.name not in rows]
    assert missing == [], f"docs/integrations.md lacks {missing}"


def test_entries_can_be_switched_off_by_name_or_group(fake, monkeypatch):
    target, patches = fake
    item = _entry(target, patches)
    monkeypatch.setenv(registry.DISABLE_ENV, "rollouts, patches")
    assert registry.install((item,)) == [] and registry.status(item) == f"disabled ({registry.DISABLE_ENV})"
    assert __import__(target).f() == "original"
    trainer = next(i for i in INTEGRATIONS if i.group == "trainers")
    assert registry.applies_here(trainer)
    monkeypatch.setenv(registry.DISABLE_ENV, trainer.name)
    assert not registry.applies_here(trainer)
    monkeypatch.setenv(registry.DISABLE_ENV, "trainer")
    with pytest.raises(ValueError, match=r"VERL_MODALITY_DISABLE: \['trainer'\] name no integration entry or group"):
        registry.applies_here(item)


def test_the_cli_hooks_the_registry(monkeypatch, tmp_path):
    from verl_modality import cli

    calls = []
    monkeypatch.setattr(registry, "install", lambda *a: calls.append(a) or [])
    assert cli.main(["validate-data", str(tmp_path / "none.parquet")]) == 1
    assert calls == [()]
