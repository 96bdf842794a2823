"""Every benchmark that starts verl's trainer selects the cpu platform on a machine without a GPU before it does, as
``verl-modality demo`` does: the README's commands run as written on a CPU-only machine."""

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
#: what starts verl's Ray trainer (and so picks verl's accelerator platform)
STARTS_VERL = {"run_main_ppo", "run_demo"}


def _calls(node: ast.AST) -> list[tuple[int, str]]:
    out = []
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            out.append((call.lineno, name))
    return sorted(out)


def _starting_scripts() -> list[Path]:
    return [
        p
        for p in sorted(BENCH.glob("bench_*.py"))
        if any(n in STARTS_VERL for _, n in _calls(ast.parse(p.read_text())))
    ]


def test_the_benchmarks_that_start_verl_are_found():
    names = {p.name for p in _starting_scripts()}
    assert {"bench_rollout.py", "bench_world_size.py", "bench_demo_compare.py", "bench_step_time.py"} <= names


@pytest.mark.parametrize("path", _starting_scripts(), ids=lambda p: p.name)
def test_main_selects_the_platform_before_verl_starts(path):
    tree = ast.parse(path.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = _calls(main)
    selected = [line for line, name in calls if name == "select_platform"]
    assert selected, f"{path.name}: main() never calls verl_modality.cli.select_platform"
    # every helper main() calls that starts verl (directly or through a module function) comes after the selection
    helpers = {
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and any(c in STARTS_VERL for _, c in _calls(n))
    }
    starts = [line for line, name in calls if name in STARTS_VERL | helpers]
    assert starts and min(selected) < min(starts), path.name
