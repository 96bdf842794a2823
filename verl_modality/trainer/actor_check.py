"""Actor check: tiny Qwen2.5-Omni thinker, demo QA data, one teacher-forced update of verl's own actor.

Each prompt of the batch gets two teacher-forced responses, one naming the correct option and one a wrong option,
scored 1 and 0. verl's GRPO turns the scores into advantages, and verl's actor (FSDP2 engine, PPO clipped loss)
takes one update; the demo reports the log-probability of correct and wrong answers before and after, and which
parts of the model (language model, audio encoder, vision encoder) the update changed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from verl_modality.models.omni_inputs import EncodedPrompt, build_actor_batch, encode_prompt

#: Parameter-name prefixes of the thinker's three parts.
COMPONENTS = {"language model": "model.", "audio encoder": "audio_tower.", "vision encoder": "visual."}


@dataclass
class DemoBatch:
    batch: TensorDict
    rows: list[dict]
    correct: torch.Tensor  # (bs,) bool: response names the correct option
    scores: torch.Tensor  # (bs,) float reward
    uids: np.ndarray  # (bs,) prompt group ids


def load_rows(data_file: str | os.PathLike, model_path: str | os.PathLike, n: int) -> tuple[list[dict], Any, Any]:
    """First ``n`` rows of a demo parquet through :class:`OmniRLDataset`, with the processor and tokenizer."""
    from omegaconf import OmegaConf
    from verl.utils import hf_processor, hf_tokenizer

    from verl_modality.data.dataset import OmniRLDataset

    tokenizer = hf_tokenizer(str(model_path))
    processor = hf_processor(str(model_path))
    if processor is None:
        raise RuntimeError(f"verl found no multimodal processor for {model_path}; is the plugin loaded?")
    config = OmegaConf.create({"max_prompt_length": 4096, "filter_overlong_prompts": False})
    dataset = OmniRLDataset(data_files=[str(data_file)], tokenizer=tokenizer, config=config, processor=processor)
    # One row per tag, richest tags first, so a small batch carries video, audio and subtitles.
    order = ("VAS", "VA", "AS", "VS", "V", "A", "S")
    by_tag: dict[str, int] = {}
    for i, tag in enumerate(dataset.dataframe["modality_tag"]):
        by_tag.setdefault(tag, i)
    first = [by_tag[t] for t in order if t in by_tag]
    taken = set(first)
    picked = first + [i for i in range(len(dataset)) if i not in taken]
    rows = [dataset[i] for i in picked[:n]]
    return rows, processor, tokenizer


def encode_row(row: dict, processor: Any, config: Any = None) -> EncodedPrompt:
    """Prompt of a dataset row as the rollout would render it (media decoded by the dataset class)."""
    from verl_modality.data.dataset import OmniRLDataset

    images, videos, audios = OmniRLDataset._process_multi_modal_info(row["raw_prompt"], None, config)
    return encode_prompt(processor, row["raw_prompt"], images=images, videos=videos, audios=audios)


def answer_response(tokenizer: Any, letter: str) -> list[int]:
    ids = tokenizer.encode(f"The answer is [{letter}].", add_special_tokens=False)
    return list(ids) + [int(tokenizer.convert_tokens_to_ids("<|im_end|>"))]


def build_demo_batch(rows: list[dict], processor: Any, tokenizer: Any, seed: int = 0) -> DemoBatch:
    """Two responses per row (correct and one wrong option), scored 1/0, in verl's trajectory layout."""
    rng = np.random.default_rng(seed)
    prompts, responses, correct, uids = [], [], [], []
    for i, row in enumerate(rows):
        encoded = encode_row(row, processor)
        letters = [chr(ord("A") + k) for k in range(len(row["choices"]))]
        wrong = rng.choice([x for x in letters if x != row["answer"]])
        for letter in (row["answer"], wrong):
            prompts.append(encoded)
            responses.append(answer_response(tokenizer, letter))
            correct.append(letter == row["answer"])
            uids.append(f"prompt{i}")
    batch = build_actor_batch(processor, prompts, responses, pad_token_id=int(tokenizer.pad_token_id))
    correct_t = torch.tensor(correct)
    return DemoBatch(batch, rows, correct_t, correct_t.float(), np.array(uids, dtype=object))


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) copies of every parameter, keyed by the Hugging Face name."""
    out = {}
    for name, param in module.named_parameters():
        value = param.full_tensor() if hasattr(param, "full_tensor") else param
        out[name.replace("_fsdp_wrapped_module.", "")] = value.detach().clone()
    return out


def changed_by_component(before: dict, after: dict) -> dict[str, dict[str, int]]:
    out = {}
    for label, prefix in COMPONENTS.items():
        names = [n for n in before if n.startswith(prefix)]
        moved = [n for n in names if not torch.equal(before[n], after[n])]
        out[label] = {"params": len(names), "changed": len(moved)}
    return out


def grpo_advantages(scores: torch.Tensor, response_mask: torch.Tensor, uids: np.ndarray) -> torch.Tensor:
    """verl's own GRPO advantages for outcome scores ``(bs,)``; returns ``(bs, R)``."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards = torch.zeros_like(response_mask, dtype=torch.float32)
    last = response_mask.sum(-1).long() - 1
    rewards[torch.arange(len(scores)), last] = scores
    adv, _ = compute_grpo_outcome_advantage(rewards, response_mask.float(), uids)
    return adv


def _mean_logprob(log_probs: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> float:
    lp = (log_probs * mask).sum(-1) / mask.sum(-1)
    return float(lp[rows].mean())


def run_actor_check(work_dir: str | os.PathLike = "demo_run", seed: int = 0, batch_size: int = 4) -> dict[str, Any]:
    """Build (or reuse) the tiny model and demo data under ``work_dir`` and run one actor update; returns a report."""
    from verl_modality.data.synthetic import make_demo_data
    from verl_modality.integrations import registry
    from verl_modality.models.tiny import make_tiny_model
    from verl_modality.trainer.local_actor import LocalActor

    if not torch.cuda.is_available():
        os.environ.setdefault("VERL_PLATFORM", "cpu")
        registry.install()  # the entries for the cpu platform, now that it is selected
    t0 = time.time()
    work = Path(work_dir)
    model_dir, data_dir = work / "tiny-omni", work / "data"
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, seed=seed)
    if not (data_dir / "train.parquet").exists():
        make_demo_data(data_dir, seed=seed)
    print(f"[actor-check] tiny model: {model_dir}   demo data: {data_dir}")

    rows, processor, tokenizer = load_rows(data_dir / "train.parquet", model_dir, batch_size)
    demo = build_demo_batch(rows, processor, tokenizer, seed=seed)
    mb = demo.batch
    print(
        f"[actor-check] batch: {len(rows)} prompts x 2 responses, tags {[r['modality_tag'] for r in rows]}, "
        f"prompt length {mb['prompts'].shape[1]} tokens (audio + video + text)"
    )

    actor = LocalActor.create(model_dir, mini_batch_size=len(demo.scores), micro_batch_size=2, lr=1e-2)
    mask = mb["response_mask"].float()
    before_lp = actor.compute_log_prob(mb)["log_probs"]
    params_before = snapshot(actor.module)
    mb["old_log_probs"] = before_lp
    mb["advantages"] = grpo_advantages(demo.scores, mb["response_mask"], demo.uids)
    metrics = actor.update(mb)
    after_lp = actor.compute_log_prob(mb)["log_probs"]
    params_after = snapshot(actor.module)

    report = {
        "device": str(next(iter(params_after.values())).device),
        "model": str(model_dir),
        "prompts": len(rows),
        "responses": int(len(demo.scores)),
        "logprob_correct_before": _mean_logprob(before_lp, mask, demo.correct),
        "logprob_correct_after": _mean_logprob(after_lp, mask, demo.correct),
        "logprob_wrong_before": _mean_logprob(before_lp, mask, ~demo.correct),
        "logprob_wrong_after": _mean_logprob(after_lp, mask, ~demo.correct),
        "changed_parameters": changed_by_component(params_before, params_after),
        "verl_actor_metrics": {k: _scalar(v) for k, v in metrics.items()},
        "seconds": round(time.time() - t0, 1),
    }
    print(
        "[actor-check] one verl actor update: mean log-prob of correct answers "
        f"{report['logprob_correct_before']:.4f} -> {report['logprob_correct_after']:.4f}, "
        f"wrong answers {report['logprob_wrong_before']:.4f} -> {report['logprob_wrong_after']:.4f}"
    )
    return report


def _scalar(value: Any) -> Any:
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        return float(np.mean(value))
    return value
