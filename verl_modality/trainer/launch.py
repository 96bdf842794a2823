"""Run verl's ``main_ppo`` in a subprocess from a YAML recipe, follow its metrics, and summarise them per tag.

Used by ``verl-modality demo`` (:mod:`verl_modality.trainer.demo`) and by the end-to-end tests. The training itself
is verl's own ``python -m verl.trainer.main_ppo``; this module only sets the environment (file logger, demo paths),
runs it under a timeout and reads verl's metrics file back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "examples"
RECIPES_DIR = REPO_ROOT / "recipes"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "main_ppo.log"


@dataclass
class RunResult:
    """Outcome of one ``main_ppo`` run: exit code, the metrics verl logged, where its log and checkpoints are."""

    returncode: int
    work_dir: Path
    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.work_dir / LOG_FILE

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(lines[-n:])

    def steps(self) -> dict[int, dict[str, float]]:
        """Metrics merged per step (validation before training is logged at step 0)."""
        merged: dict[int, dict[str, float]] = {}
        for step, data in self.metrics:
            merged.setdefault(step, {}).update(data)
        return merged


def config_dir_of(config: str | os.PathLike) -> tuple[Path, str]:
    """``examples/mapo_cpu_demo.yaml`` (or a bare name found in ``examples/``) -> (directory, config name)."""
    path = Path(config)
    if path.suffix != ".yaml":
        path = EXAMPLES_DIR / f"{config}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"recipe {path} not found (the examples/ and recipes/ folders ship with the source checkout, not the wheel)"
        )
    return path.resolve().parent, path.stem


def run_main_ppo(
    config: str | os.PathLike,
    work_dir: str | os.PathLike,
    overrides: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    echo: bool = False,
) -> RunResult:
    """``python -m verl.trainer.main_ppo --config-path <dir> --config-name <name> <overrides>`` in ``work_dir``.

    verl's metrics go to ``<work_dir>/metrics.jsonl`` (file logger), its output to ``<work_dir>/main_ppo.log``.
    With ``echo``, one line per finished step is printed while it runs. ``VERL_MODALITY_DEMO_DIR`` is set to
    ``work_dir`` so the demo recipe finds its model and data there.
    """
    config_dir, name = config_dir_of(config)
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = work_dir / METRICS_FILE
    metrics_path.unlink(missing_ok=True)
    full_env = dict(os.environ)
    full_env.update(
        {
            "VERL_FILE_LOGGER_PATH": str(metrics_path),
            "VERL_MODALITY_DEMO_DIR": str(work_dir),
            "RAY_USAGE_STATS_ENABLED": "0",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    full_env.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"--config-path={config_dir}",
        f"--config-name={name}",
        "trainer.logger=[console,file]",
        *overrides,
    ]
    start = time.monotonic()
    seen = 0
    with open(work_dir / LOG_FILE, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        # Its own process group: on a timeout every process it started (Ray's, vLLM's) goes with it.
        proc = subprocess.Popen(
            cmd, cwd=work_dir, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                if echo:
                    seen = _echo_new_steps(metrics_path, seen, start)
                if timeout is not None and time.monotonic() - start > timeout:
                    _stop_group(proc)
                    tail = RunResult(proc.returncode or -1, work_dir).log_tail(40)
                    raise TimeoutError(f"main_ppo ran past {timeout:.0f} s; see {work_dir / LOG_FILE}:\n{tail}")
        except BaseException:
            if proc.poll() is None:
                _stop_group(proc)
            raise
    try:  # whatever the run left behind in its group (a stray vLLM engine, say) does not outlive it
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if echo:
        _echo_new_steps(metrics_path, seen, start)
    from verl_modality.evaluation.training_log import read_metrics

    metrics = read_metrics(metrics_path) if metrics_path.exists() else []
    return RunResult(proc.returncode, work_dir, metrics, time.monotonic() - start)


def _stop_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the run's process group, SIGKILL it after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _echo_new_steps(metrics_path: Path, seen: int, start: float) -> int:
    if not metrics_path.exists():
        return seen
    lines = metrics_path.read_text().splitlines()
    for line in lines[seen:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line still being written
            break
        data, step = rec["data"], rec["step"]
        parts = [f"[demo] {time.monotonic() - start:6.1f}s step {step}"]
        if "critic/score/mean" in data:
            parts.append(f"reward {data['critic/score/mean']:.3f}")
        if "actor/pg_loss" in data:
            parts.append(f"pg_loss {data['actor/pg_loss']:+.4f}")
        if "actor/grad_norm" in data:
            parts.append(f"grad_norm {data['actor/grad_norm']:.3f}")
        if "val-core/tag/pooled/acc" in data:
            parts.append(f"val acc {data['val-core/tag/pooled/acc']:.3f}")
        if "timing_s/step" in data:
            parts.append(f"{data['timing_s/step']:.1f}s/step")
        print("  ".join(parts), flush=True)
        seen += 1
    return seen
