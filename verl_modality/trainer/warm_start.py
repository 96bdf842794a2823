"""Warm start of the CPU demo: verl's SFT trainer until the held-out sampled reward enters a window.

A random tiny thinker answers at chance, so every GRPO group has the same reward and RL has nothing to learn from.
The warm start runs verl's own SFT trainer (``torchrun -m verl.trainer.sft_trainer`` with
``examples/sft_cpu_demo.yaml``) on SFT records of the training rows (:mod:`verl_modality.data.demo_sft`), saving a
checkpoint every ``eval_every`` steps. Each checkpoint is written back into a full checkpoint directory
(:mod:`verl_modality.models.checkpoint`) and scored on rows held out of the SFT data: the expected reward of the
taught reply (:func:`heldout_reward`: the probability that a reply sampled at temperature 1, as the rollout
samples, is the correct option's text; teacher-forced, so exact and cheap). SFT stops at the first checkpoint whose
held-out reward reaches ``window_low``: mid-range, so that GRPO groups have reward variance. The jump from chance to
saturation is short (about 150 steps at batch 16), so a fixed step count would miss it. While a checkpoint is being
scored the trainer's process group is paused (SIGSTOP), so on a 2-core machine the two never compete.

The result is cached: ``<work_dir>/warm_start/model`` with ``warm_start.json`` recording the settings, the chosen
step and every evaluation; a later run with the same settings, base model and data reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verl_modality import options
from verl_modality.options import option
from verl_modality.trainer.launch import EXAMPLES_DIR

RECORD = "warm_start.json"
#: how options of the warm start are named in messages (``verl-modality demo --warm-start KEY=VALUE``)
SECTION = "warm_start"


@dataclass(frozen=True)
class WarmStartConfig:
    """Options of the demo's warm start (not from a paper: they size a tiny model's SFT to a CPU)."""

    max_steps: int = option(1000, ge=1)  # SFT steps at most; the window normally ends SFT well before
    eval_every: int = option(50, ge=1)  # steps between checkpoints, each scored on the held-out rows
    window_low: float = option(0.25, gt=0, le=1)  # stop at the first checkpoint whose held-out reward reaches this ...
    window_high: float = option(0.75, gt=0, le=1)  # ... a checkpoint already above this jumped the window
    heldout_per_tag: int = option(20, ge=1)  # training rows per tag held out of the SFT data to score checkpoints on
    batch_size: int = option(16, ge=1)
    lr: float = option(1.0e-3, gt=0)
    policies: tuple[str, ...] = option(("exact", "full"), nonempty=True, distinct=True)  # views of the SFT records
    seed: int = 0
    timeout_s: float = option(1800.0, gt=0)
    nproc: int = option(1, ge=1)  # data-parallel ranks of verl's SFT trainer (torchrun --nproc_per_node)

    def __post_init__(self) -> None:
        options.validate(self, SECTION)
        if self.batch_size % self.nproc:
            raise ValueError(
                f"{SECTION}.batch_size={self.batch_size} must be a multiple of {SECTION}.nproc={self.nproc} "
                "(each rank takes an equal share of a batch)"
            )
        if self.window_low > self.window_high:
            raise ValueError(
                f"{SECTION}.window_low={self.window_low} and {SECTION}.window_high={self.window_high}: the window "
                "must satisfy low <= high"
            )


@dataclass
class WarmStartResult:
    """The chosen checkpoint (``model_dir``), its step and held-out reward, and every evaluation on the way."""

    model_dir: Path
    step: int
    reward: float
    per_tag: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False
    seconds: float = 0.0
    status: str = "in_window"  # in_window | jumped_window | budget_spent


def split_heldout(rows: Sequence[Mapping[str, Any]], per_tag: int) -> tuple[list[dict], list[dict]]:
    """``(train, heldout)``: the first ``per_tag`` QA rows of each tag (file order) are held out."""
    taken: Counter = Counter()
    train, heldout = [], []
    for row in rows:
        tag = str(row["modality_tag"])
        if row.get("task", "qa") == "qa" and taken[tag] < per_tag:
            taken[tag] += 1
            heldout.append(dict(row))
        else:
            train.append(dict(row))
    if not train:
        raise ValueError(f"holding out {per_tag} rows per tag leaves no SFT rows")
    return train, heldout


def heldout_reward(
    model_dir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    policy: str = "exact",
    replies: Callable[[Mapping[str, Any]], Sequence[str]] | None = None,
) -> tuple[float, dict[str, float]]:
    """Expected reward of the taught reply on ``rows`` under the ``policy`` view; pooled and per tag.

    For each row, the probability that one reply sampled at temperature 1 (the rollout's never-sampled tokens
    excluded, as it excludes them) is exactly the correct option's text in brackets followed by the end of the
    turn, computed by one teacher-forced forward pass instead of sampling. It is a lower bound of the sampled
    reward (other replies, e.g. the letter, can score too) and has no sampling noise. ``replies`` (row -> distinct
    correct replies, default the taught one) sums the probabilities of several replies the reward credits.
    """
    import torch

    from verl_modality.data.demo_sft import answer_text
    from verl_modality.models.generation import RowGenerator

    gen = RowGenerator(
        str(model_dir), max_prompt_length=1024, max_response_length=32, data_config={"modality": {"policy": policy}}
    )
    core, tok = gen.core, gen.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    scores: dict[str, list[float]] = defaultdict(list)
    with torch.no_grad():
        for row in rows:
            p = gen.prompt(row)
            prob = 0.0
            for reply in replies(row) if replies is not None else [answer_text(row)]:
                target = [*tok(reply, add_special_tokens=False)["input_ids"], end]
                inputs = core.model_inputs(p.prompt_ids, None, p.videos, p.audios)
                ids = torch.cat([inputs["input_ids"], torch.tensor([target])], dim=1)
                inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
                logits = core.model(**inputs, use_cache=False).logits[0, len(p.prompt_ids) - 1 : -1].float()
                if core.suppress_ids:
                    logits[:, core.suppress_ids] = float("-inf")
                prob += float(torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(target)[:, None]).sum().exp())
            scores[str(row["modality_tag"])].append(prob)
    pooled = [s for v in scores.values() for s in v]
    return sum(pooled) / max(len(pooled), 1), {t: sum(v) / len(v) for t, v in scores.items()}


def _fingerprint(cfg: WarmStartConfig, base_model: Path, train_file: Path) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for path in sorted(base_model.glob("*.safetensors")) + [train_file]:
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal torchrun and every process below it (its workers run in their own sessions, out of its group)."""
    import psutil

    try:
        procs = [psutil.Process(proc.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def sft_command(cfg: WarmStartConfig, sft_file: Path, media_root: Path, base_model: Path, ckpt_dir: Path) -> list[str]:
    """The torchrun command of the warm start's SFT (``cfg.nproc`` CPU processes, one data-parallel rank each)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc_per_node", str(cfg.nproc),
        "-m", "verl.trainer.sft_trainer", f"--config-path={EXAMPLES_DIR}", "--config-name=sft_cpu_demo",
        f"data.train_files={sft_file}", f"+data.media_root={media_root}", f"model.path={base_model}",
        f"data.train_batch_size={cfg.batch_size}", f"data.micro_batch_size_per_gpu={cfg.batch_size // cfg.nproc}",
        f"optim.lr={cfg.lr}", f"trainer.total_training_steps={cfg.max_steps}", f"trainer.save_freq={cfg.eval_every}",
        f"trainer.default_local_dir={ckpt_dir}", f"trainer.seed={cfg.seed}",
    ]  # fmt: skip


def run_warm_start(
    work_dir: str | os.PathLike,
    cfg: WarmStartConfig | None = None,
    base_model: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = print,
) -> WarmStartResult:
    """SFT ``base_model`` (default ``<work_dir>/model``) on ``<data_dir>/train.parquet`` until the held-out window;
    the chosen checkpoint ends up in ``<work_dir>/warm_start/model``. Cached (see the module docstring)."""
    from verl_modality.data import schema
    from verl_modality.data.dataset import resolve_media_paths
    from verl_modality.data.demo_sft import write_sft_file

    cfg = cfg or WarmStartConfig()
    say = echo or (lambda _msg: None)
    work = Path(work_dir).resolve()
    base = Path(base_model).resolve() if base_model else work / "model"
    data = Path(data_dir).resolve() if data_dir else work / "data"
    train_file = data / "train.parquet"
    out = work / "warm_start"
    model_dir = out / "model"
    fingerprint = _fingerprint(cfg, base, train_file)
    cached = _cached(out / RECORD, model_dir, fingerprint)
    if cached is not None:
        say(f"[warm start] cached: step {cached.step}, held-out reward {cached.reward:.3f} ({model_dir})")
        return cached
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    train_rows, heldout = split_heldout(schema.read_rows(train_file), cfg.heldout_per_tag)
    heldout = [resolve_media_paths(r, data) for r in heldout]
    sft_file = write_sft_file(train_rows, out / "sft.parquet", cfg.policies)
    ckpt_dir = out / "checkpoints"
    cmd = sft_command(cfg, sft_file, data, base, ckpt_dir)
    env = {**os.environ, "VERL_PLATFORM": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    n_sft = len(train_rows) * len(cfg.policies)
    say(
        f"[warm start] verl SFT of {base.name} on {n_sft} records ({len(train_rows)} rows x {'/'.join(cfg.policies)}), "
        f"{len(heldout)} rows held out; checkpoint every {cfg.eval_every} steps, stop at held-out reward >= "
        f"{cfg.window_low}; log: {out / 'sft.log'}"
    )
    start = time.monotonic()
    with open(out / "sft.log", "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            history, status = _score_checkpoints(proc, cfg, base, out, heldout, start, say)
        finally:
            _stop(proc)
    if not history:
        tail = "\n".join((out / "sft.log").read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(
            f"verl's SFT trainer saved no checkpoint (exit code {proc.returncode}); see {out / 'sft.log'}:\n{tail}"
        )
    chosen = history[-1]
    (out / f".model_step_{chosen['step']}").rename(model_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    seconds = time.monotonic() - start
    if status != "in_window":
        what = "jumped past the window" if status == "jumped_window" else "never reached the window"
        say(
            f"[warm start] warning: the held-out reward {what} [{cfg.window_low}, {cfg.window_high}]; using step {chosen['step']}"
        )
    record = {
        "fingerprint": fingerprint,
        "config": asdict(cfg),
        "step": chosen["step"],
        "reward": chosen["reward"],
        "per_tag": chosen["per_tag"],
        "history": history,
        "status": status,
        "seconds": seconds,
    }
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    say(
        f"[warm start] step {chosen['step']} chosen (held-out reward {chosen['reward']:.3f}) after {seconds:.0f} s: {model_dir}"
    )
    return WarmStartResult(
        model_dir, chosen["step"], chosen["reward"], chosen["per_tag"], history, False, seconds, status
    )


def _cached(record_path: Path, model_dir: Path, fingerprint: str) -> WarmStartResult | None:
    """The recorded warm start when it was made with the same settings, base model and data."""
    if not (record_path.is_file() and (model_dir / "config.json").is_file()):
        return None
    record = json.loads(record_path.read_text())
    if record.get("fingerprint") != fingerprint:
        return None
    keys = ("step", "reward", "per_tag", "history")
    return WarmStartResult(model_dir, *(record[k] for k in keys), True, 0.0, record["status"])


def _score_checkpoints(
    proc: subprocess.Popen,
    cfg: WarmStartConfig,
    base: Path,
    out: Path,
    heldout: list[dict],
    start: float,
    say: Callable[[str], None],
) -> tuple[list[dict[str, Any]], str]:
    """Score each checkpoint of the running SFT trainer on the held-out rows (the trainer paused meanwhile) until
    one reaches the window. Returns the evaluations and the status (``in_window``, ``jumped_window``,
    ``budget_spent``); the last evaluation's model is left in ``out/.model_step_<step>``."""
    from verl_modality import vocabulary
    from verl_modality.models.checkpoint import export_thinker, load_sharded_state

    ckpt_dir = out / "checkpoints"
    history: list[dict[str, Any]] = []
    for step in range(cfg.eval_every, cfg.max_steps + 1, cfg.eval_every):
        while not _checkpoint_done(ckpt_dir, step):
            if proc.poll() is not None:
                break
            if time.monotonic() - start > cfg.timeout_s:
                raise TimeoutError(f"warm start ran past {cfg.timeout_s:.0f} s; see {out / 'sft.log'}")
            time.sleep(0.5)
        if not _checkpoint_done(ckpt_dir, step):
            break
        _signal_group(proc, signal.SIGSTOP)
        try:
            candidate = out / f".model_step_{step}"
            export_thinker(base, load_sharded_state(ckpt_dir / f"global_step_{step}"), candidate)
            reward, per_tag = heldout_reward(candidate, heldout)
        finally:
            _signal_group(proc, signal.SIGCONT)
        entry = {"step": step, "reward": reward, "per_tag": per_tag, "seconds": time.monotonic() - start}
        tags = " ".join(f"{t} {v:.2f}" for t, v in sorted(per_tag.items(), key=lambda kv: vocabulary.TAGS.index(kv[0])))
        say(f"[warm start] {entry['seconds']:6.1f}s step {step}  held-out reward {reward:.3f}  ({tags})")
        if history:
            shutil.rmtree(out / f".model_step_{history[-1]['step']}", ignore_errors=True)
        history.append(entry)
        if reward >= cfg.window_low:
            return history, "in_window" if reward <= cfg.window_high else "jumped_window"
    return history, "budget_spent"


def _stop(proc: subprocess.Popen) -> None:
    """End torchrun and its workers: SIGTERM (resumed, in case it is paused), SIGKILL after 30 s, then any left."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        _signal_group(proc, signal.SIGCONT)  # a paused process acts on SIGTERM only once resumed
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    _signal_group(proc, signal.SIGKILL)


def _checkpoint_done(ckpt_dir: Path, step: int) -> bool:
    """verl writes ``latest_checkpointed_iteration.txt`` after a checkpoint's files are complete."""
    marker = ckpt_dir / "latest_checkpointed_iteration.txt"
    try:
        return int(marker.read_text().strip() or 0) >= step
    except (FileNotFoundError, ValueError):
        return False
