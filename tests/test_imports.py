"""Import discipline: plain-record modules load without verl, torch or Ray, and the modules verl's plugin discovery
loads never import verl at load time (they would be re-entered half-initialised while verl itself is loading)."""

import ast
from pathlib import Path

import pytest
from helpers import run_json

PACKAGE = Path(__file__).resolve().parents[1] / "verl_modality"
HEAVY = ("verl", "torch", "ray", "transformers", "vllm")

#: Modules that work on plain records and files (rewards on strings, reports on result files).
LIGHT = (
    "verl_modality",
    "verl_modality.vocabulary",
    "verl_modality.rewards.choice",
    "verl_modality.rewards.string_match",
    "verl_modality.evaluation.report",
    "verl_modality.evaluation.published",
    "verl_modality.evaluation.metrics",
    "verl_modality.evaluation.config",
    "verl_modality.evaluation.scoring",
    "verl_modality.evaluation.resume",
    "verl_modality.data.schema",
    "verl_modality.data.validate",
    "verl_modality.data.converters",
)


def test_hooking_the_registry_imports_nothing_heavy():
    out = run_json(
        "import json, sys; from verl_modality.integrations import registry; hooked = registry.install();"
        "print(json.dumps([len(hooked), sorted(set(m.split('.')[0] for m in sys.modules))]))",
        env={"VERL_PLATFORM": "cpu"},
    )
    assert out[0] > 0 and not set(HEAVY) & set(out[1]), sorted(set(HEAVY) & set(out[1]))


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_import_without_heavy_packages(module):
    out = run_json(f"import json, sys, {module}; print(json.dumps(sorted(set(m.split('.')[0] for m in sys.modules))))")
    assert not set(HEAVY) & set(out), f"importing {module} loaded {sorted(set(HEAVY) & set(out))}"


def _load_time_imports(path: Path) -> list[str]:
    """Modules imported when ``path`` is executed: statements outside function bodies (module, class, if, try)."""
    found: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append(node.module)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit([n for n in getattr(node, field, []) if isinstance(n, ast.stmt | ast.ExceptHandler)])

    visit(ast.parse(path.read_text()).body)
    return found


def test_load_time_imports_sees_module_and_class_level_but_not_function_bodies(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import os\ntry:\n    from verl.a import b\nexcept ImportError:\n    import verl.c\n"
        "class K:\n    import verl.d\n    def f(self):\n        import verl.e\ndef g():\n    from verl import f\n"
    )
    assert _load_time_imports(src) == ["os", "verl.a", "verl.c", "verl.d"]


def test_plugin_discovery_loads_no_module_that_imports_verl_at_load_time():
    """Every module the entry point loads (with ``VERL_PLATFORM=cpu``, the largest set) imports verl only inside
    functions, so importing any of them first, then verl, cannot re-enter it half-initialised."""
    out = run_json(
        "import json, sys, verl; from verl_modality import _register as r;"
        "print(json.dumps({'errors': r.LOAD_ERRORS, 'modules': sorted(m for m in sys.modules"
        " if m.startswith('verl_modality'))}))",
        env={"VERL_PLATFORM": "cpu"},
    )
    assert out["errors"] == []
    assert "verl_modality.platform.cpu" in out["modules"] and "verl_modality.models.omni" in out["modules"]
    offenders = {}
    for name in out["modules"]:
        base = PACKAGE.joinpath(*name.split(".")[1:])
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        verl_imports = [m for m in _load_time_imports(path) if m == "verl" or m.startswith("verl.")]
        if verl_imports:
            offenders[name] = verl_imports
    assert offenders == {}, f"modules loaded by the plugin's entry point import verl at load time: {offenders}"


@pytest.mark.parametrize(
    "module",
    [
        "verl_modality.platform.cpu",
        "verl_modality.data.dataset",
        "verl_modality.trainer.modality_trainer",  # imports verl's trainer, whose hook points back at it
        "verl_modality.rewards.reward_manager",  # likewise for verl's reward-manager registry
    ],
)
def test_a_module_imported_before_verl_leaves_the_plugin_loaded(module):
    out = run_json(
        f"import json, {module}, verl; from verl_modality import _register as r;"
        "from verl.trainer.ppo.v1 import get_trainer_cls;"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls;"
        "from verl_modality.integrations import registry;"
        "print(json.dumps({'errors': r.LOAD_ERRORS, 'platforms': r.REGISTERED['platforms'],"
        " 'trainer': get_trainer_cls('sync').__name__, 'reward': get_reward_manager_cls('modality').__name__,"
        " 'states': sorted({registry.status(i) for i in registry.INTEGRATIONS if not i.target.startswith(('vllm',"
        " 'verl.workers.rollout.vllm'))})}))",
        env={"VERL_PLATFORM": "cpu"},
    )
    assert out == {
        "errors": [],
        "platforms": ["cpu"],
        "trainer": "ModalityTrainerSync",
        "reward": "ModalityRewardManager",
        "states": ["applied"],
    }


# ---------------------------------------------------------------------------------------------------------------
# the import graph, function-level imports included

#: Rank of each top-level part of the package: a module may import its own rank or lower ones only.
LAYERS = {
    "vocabulary": 0,
    "protocol": 0,
    "jsonl_log": 0,
    "options": 0,
    "data": 1,
    "algorithms": 1,
    "models": 2,
    "rewards": 2,
    "rollout": 3,
    "evaluation": 3,
    "audio_contribution": 4,
    "platform": 5,
    "integrations": 5,
    "trainer": 6,
    "doctor": 7,
    "cli": 7,
    "_register": 7,
    "": 0,  # the package root: its version only
}
#: Upward imports with a reason; each is a function-level import.
ALLOWED_UPWARD = {
    ("verl_modality.data.omni_sft_dataset", "verl_modality.models.omni"): "Omni multimodal position ids",
    ("verl_modality.evaluation.backends", "verl_modality.platform.vllm_cpu"): "whether vLLM is a CPU build (metadata)",
}


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it imports anywhere in its source}`` (``from a import b`` counts ``a.b``
    when that is a module, else ``a``)."""
    modules = _modules(package)
    root = package.name

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                dep = owner(target) if target == root or target.startswith(root + ".") else None
                if dep and dep != name:
                    graph[name].add(dep)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def test_every_part_of_the_package_has_a_layer():
    assert {m.split(".")[1] for m in _modules() if "." in m} <= set(LAYERS)


def test_imports_run_one_way():
    upward = {
        (a, b): f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, deps in import_graph().items()
        for b in deps
        if _layer(b) > _layer(a) and (a, b) not in ALLOWED_UPWARD
    }
    assert upward == {}, "\n".join(sorted(upward.values()))
    graph = import_graph()
    assert all(b in graph[a] for a, b in ALLOWED_UPWARD), "an allowed upward import is gone: drop it from the list"


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_graph_and_cycles_on_a_small_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\nfrom pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg import a\n    import pkg.sub.c\n")
    (pkg / "sub" / "c.py").write_text("from pkg.sub.c_missing import x\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.sub": set(), "pkg.a": {"pkg.sub.b", "pkg.sub"}, "pkg.sub.b": {"pkg", "pkg.a", "pkg.sub.c"},
                     "pkg.sub.c": {"pkg.sub"}}  # fmt: skip
    assert find_cycles(graph) == [["pkg.a", "pkg.sub.b"]]


# ---------------------------------------------------------------------------------------------------------------
# one import path per name


def _module_names(path: Path, root: str) -> tuple[set[str], set[str]]:
    """``(imported, defined)``: the names a module binds at its top level by importing them from the package ``root``,
    and by def / class / assignment."""
    imported, defined = set(), set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == root:
            imported.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return imported, defined


def reexported_uses(package: Path, sources: list[Path]) -> list[str]:
    """Uses, in ``sources``, of a name through a module of ``package`` that only imports it from another module of the
    package: ``from mod import name`` and ``mod.name`` where ``mod`` was bound by ``from pkg import mod`` /
    ``import pkg.mod as mod``."""
    modules = _modules(package)
    borrowed = {}
    for name, path in modules.items():
        imported, defined = _module_names(path, package.name)
        borrowed[name] = {n for n in imported - defined if f"{name}.{n}" not in modules}
    found = []
    for path in sources:
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> package module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                for a in node.names:
                    if f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                    elif a.name in borrowed[node.module]:
                        found.append(f"{path.name}:{node.lineno}: from {node.module} import {a.name}")
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if node.attr in borrowed[aliases[node.value.id]]:
                    found.append(f"{path.name}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_every_name_is_imported_from_its_home():
    """No module re-exports another's names (``schema.TAGS`` for ``vocabulary.TAGS``): one import path per name."""
    root = PACKAGE.parent
    sources = [p for d in ("verl_modality", "tests", "bench", "scripts") for p in sorted((root / d).rglob("*.py"))]
    assert reexported_uses(PACKAGE, sources) == []


def test_reexported_uses_on_a_small_package(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "home.py").write_text("X = 1\n")
    (pkg / "middle.py").write_text("import os\nfrom pkg.home import X\nY = X\n")
    user = tmp_path / "user.py"
    user.write_text(
        "from pkg import middle\nfrom pkg.home import X\nfrom pkg.middle import X, Y\nmiddle.X\nmiddle.Y\nmiddle.os\n"
    )
    assert reexported_uses(pkg, [user]) == ["user.py:3: from pkg.middle import X", "user.py:4: pkg.middle.X"]
