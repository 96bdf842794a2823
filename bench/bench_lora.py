"""LoRA against full fine-tuning of the Omni thinker, both model families side by side in one run (CPU).

    .venv/bin/python bench/bench_lora.py [--batch 4] [--length 256] [--repeats 20] [--warmup 3] [--rank 8] [--quick]

Per family (tiny random-weight Qwen2.5-Omni and Qwen3-Omni thinkers, ``make_tiny_model`` seed 0), two copies of the
thinker: one trains every parameter, the other is PEFT's ``get_peft_model`` with ``LoraConfig(r=8, lora_alpha=16)``
and the target and exclude modules the plugin gives verl for its defaults (``target_modules="all-linear"`` -> the
language model's linear layers, ``exclude_modules=None`` -> the encoders; verl_modality/models/lora.py). Reported:

- trainable parameters, and the adapted modules outside the language model's decoder layers (expected: none);
- AdamW state bytes after one step (``exp_avg``, ``exp_avg_sq`` and ``step`` per tensor, float32). A text-only batch gives the audio and vision encoders no gradient, so AdamW (which creates its state lazily)
  holds none for them: the full row's state covers the language model only, and the parameters it covers are printed;
- update time: forward + backward + ``AdamW.step`` on one fixed batch of random token ids (next-token
  cross-entropy), median and best of ``--repeats`` after ``--warmup`` steps; the two copies alternate step by step
  in the same process, so both see the same load (other load on a shared machine only ever adds time).

Then the same counts for the real checkpoints' language models (Qwen2.5-Omni-7B and Qwen3-Omni-30B-A3B thinkers),
computed from their shapes on the meta device (nothing is downloaded; the audio and vision encoders are not counted,
which full fine-tuning would also train). Qwen3-Omni's decoder layers are all MoE layers whose experts are fused 3-D
parameters, not linear modules: LoRA there adapts the attention projections only.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

FAMILIES = ("qwen2_5_omni", "qwen3_omni")
#: a language-model decoder layer's module, as the thinker names it (PEFT adds ``base_model.model.`` in front)
LM_LAYER = re.compile(r"^(base_model\.model\.)?model\.layers\.\d+\.")
#: the real checkpoints' language models (thinker ``text_config``); untied output heads
REAL_MODELS = {
    "Qwen2.5-Omni-7B": dict(
        family="qwen2_5_omni",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    ),
    "Qwen3-Omni-30B-A3B": dict(
        family="qwen3_omni",
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=768,
        vocab_size=152064,
    ),
}


def lora_config(rank: int, alpha: int) -> Any:
    """PEFT's LoRA config as verl builds it from the plugin's reading of verl's defaults."""
    from peft import LoraConfig

    from verl_modality.models.lora import ALL_LINEAR, thinker_exclude_modules, thinker_target_modules

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=thinker_target_modules(ALL_LINEAR),
        exclude_modules=thinker_exclude_modules(None),
    )


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapted_outside_language_model(model: Any) -> list[str]:
    """Modules holding a LoRA adapter that are not in a language-model decoder layer."""
    return sorted(
        name.removesuffix(".lora_A")
        for name, _ in model.named_modules()
        if name.endswith(".lora_A") and not LM_LAYER.match(name)
    )


def optimizer_state_bytes(optimizer: Any) -> int:
    import torch

    return sum(
        v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)
    )


def parameters_with_state(optimizer: Any) -> int:
    return sum(p.numel() for p in optimizer.state)


def measure(model_dir: str | Path, batch: int, length: int, repeats: int, warmup: int, rank: int, alpha: int) -> dict:
    """Full fine-tuning against LoRA on one tiny thinker: counts, optimizer state, update time (median)."""
    import torch
    from peft import get_peft_model

    from verl_modality.models.omni import load_thinker

    torch.manual_seed(0)
    full = load_thinker(model_dir, attn_implementation="sdpa").train()
    lora = get_peft_model(copy.deepcopy(full), lora_config(rank, alpha)).train()
    ids = torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(0))  # plain BPE ids
    runs = {}
    for mode, model in (("full", full), ("lora", lora)):
        params = [p for p in model.parameters() if p.requires_grad]
        runs[mode] = (model, torch.optim.AdamW(params, lr=1e-5))

    def step(mode: str) -> float:
        model, optimizer = runs[mode]
        t0 = time.perf_counter()
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for _ in range(max(warmup, 1)):  # at least one step: the AdamW state exists after it
        for mode in runs:
            step(mode)
    times: dict[str, list[float]] = {mode: [] for mode in runs}
    for _ in range(repeats):
        for mode in runs:
            times[mode].append(step(mode))
    out = {
        mode: {
            "trainable": trainable_parameters(model),
            "total": sum(p.numel() for p in model.parameters()),
            "state_bytes": optimizer_state_bytes(optimizer),
            "with_state": parameters_with_state(optimizer),
            "state_tensors": len(optimizer.state),
            "s": statistics.median(times[mode]),
            "best_s": min(times[mode]),
        }
        for mode, (model, optimizer) in runs.items()
    }
    out["lora"]["outside_lm"] = adapted_outside_language_model(lora)
    return out


def language_model_counts(name: str, rank: int) -> dict:
    """Parameters of a real checkpoint's language model (embeddings, decoder layers, output head) and of its LoRA
    adapters (``rank * (in + out)`` per adapted linear module), from the shapes built on the meta device."""
    import torch

    from verl_modality.models.lora import thinker_target_modules

    spec = dict(REAL_MODELS[name])
    family = spec.pop("family")
    if family == "qwen2_5_omni":
        from transformers.models.qwen2_5_omni.configuration_qwen2_5_omni import Qwen2_5OmniTextConfig as Config
        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniThinkerTextModel as Model
    else:
        from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeTextConfig as Config
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextModel as Model
    config = Config(**spec)
    with torch.device("meta"):
        model = Model(config)
    total = sum(p.numel() for p in model.parameters()) + config.vocab_size * config.hidden_size  # + lm_head
    target = thinker_target_modules("all-linear")
    lora = sum(
        rank * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and re.fullmatch(target, f"model.{n}")
    )
    return {"total": total, "lora": lora}


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="batch 2 x 32 tokens, 2 repeats after 1 warm-up step")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.length, args.repeats, args.warmup = 2, 32, 2, 1

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from verl_modality.models.tiny import make_tiny_model

    torch.set_num_threads(args.threads)
    print(
        f"LoRA r={args.rank} alpha={args.alpha} (language-model linear layers) vs full fine-tuning, AdamW, CPU, "
        f"{args.threads} threads, batch {args.batch} x {args.length} random token ids, "
        f"update time: median and best of {args.repeats} after {args.warmup} warm-up steps, alternating"
    )
    header = (
        f"{'model':>20} {'mode':>5} {'trainable':>14} {'x full':>8} {'AdamW state':>13} {'x full':>8} "
        f"{'update s':>9} {'x full':>7} {'best s':>7} {'x full':>7}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="bench_lora_") as tmp:
        for family in FAMILIES:
            res = measure(
                make_tiny_model(Path(tmp) / family, seed=0, family=family),
                args.batch,
                args.length,
                args.repeats,
                args.warmup,
                args.rank,
                args.alpha,
            )
            full = res["full"]
            for mode in ("full", "lora"):
                r = res[mode]
                print(
                    f"{'tiny ' + family:>20} {mode:>5} {r['trainable']:>14,} {r['trainable'] / full['trainable']:>8.4f} "
                    f"{_mib(r['state_bytes']):>13} {r['state_bytes'] / full['state_bytes']:>8.4f} "
                    f"{r['s']:>9.4f} {r['s'] / full['s']:>7.2f} {r['best_s']:>7.4f} {r['best_s'] / full['best_s']:>7.2f}"
                )
            outside = res["lora"]["outside_lm"]
            print(
                f"{'':>20} AdamW state for {full['with_state']:,} of the {full['trainable']:,} full parameters (no "
                f"gradient reaches the encoders); LoRA adapters outside the language model: {len(outside)} "
                f"{outside[:4] if outside else ''}"
            )
    print(f"real checkpoints' language models (meta device, encoders not counted), LoRA r={args.rank}:")
    for name in REAL_MODELS:
        c = language_model_counts(name, args.rank)
        full_state, lora_state = 8 * c["total"], 8 * c["lora"]  # fp32 exp_avg + exp_avg_sq per trainable parameter
        print(
            f"{name:>20}  full {c['total']:>15,} params, AdamW state {_mib(full_state)}; LoRA {c['lora']:>12,} "
            f"({c['lora'] / c['total']:.4%}), AdamW state {_mib(lora_state)}"
        )


if __name__ == "__main__":
    main()
