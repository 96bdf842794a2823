"""Difficulty-adaptive per-tag weights w_M = sigmoid((D_M - mean(H)) / (std(H) + eps)) (MAPLE Eq. 3-4, Alg. 2).

Following Alg. 2 (lines 15-17), this step's D_M is appended to the history H before z_M is computed, so on the very
first step of a single tag H = [D_M], std(H) = 0, z_M = 0 and w_M = 0.5. std is the population standard deviation.
With the ``global`` history (the default, App. E) every tag's difficulty goes into one window and each tag is
compared with all of them; with ``per_tag`` each tag has its own window. The window keeps the entries of the last
``window`` training steps.
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
    """The rolling KL history and the weights it gives; saved exactly with :meth:`state_dict`."""

    def __init__(self, config: MapoConfig | None = None, window: int | None = None):
        self.config = config or MapoConfig()
        self.window = window if window is not None else self.config.history_window
        if self.window is not None and int(self.window) < 1:
            raise ValueError(f"history window must be >= 1 steps, got {self.window}")
        self.entries: list[tuple[int, str, float]] = []  # (step, tag, D), oldest first
        self.steps_seen = 0

    def weights(self, difficulties: dict[str, float], step: int | None = None) -> dict[str, float]:
        """Append this step's ``{tag: D_M}`` to the history and return ``{tag: w_M}``.

        ``step`` is the training step (verl's global step); without it an internal counter is used. Tags are
        processed in the order given, which callers keep canonical so that results do not depend on row order.
        """
        if step is None:
            step = self.steps_seen + 1
        step = int(step)
        if self.entries and step < self.entries[-1][0]:
            raise ValueError(f"step {step} is older than the history's last step {self.entries[-1][0]}")
        for tag, d in difficulties.items():
            if not math.isfinite(d):
                raise ValueError(f"difficulty of tag {tag!r} is {d}")
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
        if state.get("history") != self.config.history:
            raise ValueError(
                f"saved adaptive-weight history is {state.get('history')!r}, this run uses {self.config.history!r}"
            )
        self.window = state.get("window")
        self.steps_seen = int(state["steps_seen"])
        self.entries = [(int(s), str(t), float(d)) for s, t, d in state["entries"]]
