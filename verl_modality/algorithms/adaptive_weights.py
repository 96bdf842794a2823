"""Difficulty-adaptive per-tag weights w_M = sigmoid((D_M - mean(H)) / (std(H) + eps)) (MAPLE Eq. 3-4, Alg. 2).

Choices, where the paper leaves room:

- This step's D values join the history *before* z is computed: Alg. 2 appends D_M to H_M (line 15) and then
  computes z_M (line 16). With several tags in one batch, all of the step's D values are appended first, then every
  tag's z is computed against the same H, so the result does not depend on the order of the tags.
- First step: H holds only this step's values. One tag: H = [D_M], std 0, z = 0, w = 0.5 exactly. A constant
  history likewise gives z = 0 (eps keeps the division finite).
- mean and std are the population statistics of H (``math.fsum``, so the order of entries does not matter).
- ``global`` history (default, App. E.2.2: the window "aggregates KL values across (almost) all modality tags"): one
  window over every tag's D; ``per_tag``: one window per tag (Eq. 4's H_M read literally).
- The window counts training steps: an entry from step s is kept while s > step - window. With one tag per batch a
  step adds one value; with K tags, K values. ``window=None`` keeps everything (the trainer resolves None to
  steps-per-epoch, App. E.2.2). Calling twice for the same step appends twice.
"""

from __future__ import annotations

import math

from verl_modality.algorithms.config import MapoConfig


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / n
    return mean, math.sqrt(var)


class AdaptiveWeightState:
    """The rolling KL history and the weights it gives; saved exactly with :meth:`state_dict`.

    ``config`` supplies ``history`` (global/per_tag) and ``eps``; ``window`` (steps) overrides
    ``config.history_window``.
    """

    def __init__(self, config: MapoConfig | None = None, window: int | None = None):
        self.config = config or MapoConfig()
        window = window if window is not None else self.config.history_window
        if window is not None and (isinstance(window, bool) or int(window) != window or int(window) < 1):
            raise ValueError(f"history window must be an integer >= 1 (steps) or None, got {window!r}")
        self.window = None if window is None else int(window)
        self.entries: list[tuple[int, str, float]] = []  # (step, tag, D), oldest first
        self.steps_seen = 0

    def weights(self, difficulties: dict[str, float], step: int | None = None) -> dict[str, float]:
        """Append this step's ``{tag: D_M}`` to the history, drop entries outside the window, return ``{tag: w_M}``.

        ``step`` is the training step (verl's global step; steps must not go backwards); without it the step after
        the last one seen is used. Entries are stored in the order given (callers pass canonical tag order).
        """
        if step is None:
            step = self.steps_seen + 1
        step = int(step)
        if step < self.steps_seen:
            raise ValueError(f"step {step} is older than the history's last step {self.steps_seen}")
        for tag, d in difficulties.items():
            if not math.isfinite(d):
                raise ValueError(f"difficulty of tag {tag!r} is {d}")
        for tag, d in difficulties.items():
            self.entries.append((step, str(tag), float(d)))
        if self.window is not None:
            oldest = step - int(self.window) + 1
            self.entries = [e for e in self.entries if e[0] >= oldest]
        self.steps_seen = max(self.steps_seen, step)
        eps = self.config.eps
        out = {}
        if self.config.history == "global":
            mean, std = _mean_std([d for _, _, d in self.entries])
            for tag, d in difficulties.items():
                out[tag] = sigmoid((d - mean) / (std + eps))
        else:
            for tag, d in difficulties.items():
                mean, std = _mean_std([v for _, t, v in self.entries if t == tag])
                out[tag] = sigmoid((d - mean) / (std + eps))
        return out

    def history(self, tag: str | None = None) -> list[float]:
        """The difficulties in the window (of one tag, or all), oldest first."""
        return [d for _, t, d in self.entries if tag is None or t == tag]

    def state_dict(self) -> dict:
        """Plain JSON-serialisable state (floats round-trip exactly through ``json``)."""
        return {
            "history": self.config.history,
            "window": self.window,
            "steps_seen": self.steps_seen,
            "entries": [[s, t, d] for s, t, d in self.entries],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (also after a JSON round trip); later weights are bit-identical."""
        if state.get("history") != self.config.history:
            raise ValueError(
                f"saved adaptive-weight history is {state.get('history')!r}, this run uses {self.config.history!r}"
            )
        self.window = state.get("window")
        self.steps_seen = int(state["steps_seen"])
        self.entries = [(int(s), str(t), float(d)) for s, t, d in state["entries"]]
