import json
import math

import pytest

from verl_modality.algorithms.adaptive_weights import AdaptiveWeightState
from verl_modality.algorithms.config import MapoConfig


def sig(z):
    return 1 / (1 + math.exp(-z))


def pop_stats(values):
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def test_global_history_sequence_by_hand():
    cfg = MapoConfig(adaptive_weights=True, history="global")
    st = AdaptiveWeightState(cfg, window=2)
    eps = cfg.eps
    # step 1: H = [1.0, 3.0] -> mean 2, std 1
    w1 = st.weights({"V": 1.0, "A": 3.0}, step=1)
    assert w1["V"] == pytest.approx(sig((1.0 - 2.0) / (1.0 + eps)))
    assert w1["A"] == pytest.approx(sig((3.0 - 2.0) / (1.0 + eps)))
    # step 2: H = [1, 3, 2]
    w2 = st.weights({"V": 2.0}, step=2)
    m, s = pop_stats([1.0, 3.0, 2.0])
    assert w2["V"] == pytest.approx(sig((2.0 - m) / (s + eps)))
    # step 3 with a 2-step window: step 1's entries drop out, H = [2, 5]
    w3 = st.weights({"S": 5.0}, step=3)
    m, s = pop_stats([2.0, 5.0])
    assert w3["S"] == pytest.approx(sig((5.0 - m) / (s + eps)))
    assert st.history() == [2.0, 5.0]


def test_per_tag_history_and_first_step():
    cfg = MapoConfig(adaptive_weights=True, history="per_tag")
    st = AdaptiveWeightState(cfg)
    assert st.weights({"V": 0.7, "A": 0.1}, step=1) == {"V": 0.5, "A": 0.5}  # one entry each: z = 0
    w = st.weights({"V": 0.3, "A": 0.1}, step=2)
    m, s = pop_stats([0.7, 0.3])
    assert w["V"] == pytest.approx(sig((0.3 - m) / (s + cfg.eps)))
    assert w["A"] == 0.5  # constant history: std 0, z 0
    assert st.history("V") == [0.7, 0.3]


def test_state_round_trip_is_exact():
    cfg = MapoConfig(adaptive_weights=True)
    a = AdaptiveWeightState(cfg, window=3)
    for step in range(1, 6):
        a.weights({"V": 0.1 * step + 1 / 3, "VA": 2.0 / (step + 0.7)}, step=step)
    b = AdaptiveWeightState(cfg, window=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for step in range(6, 9):
        d = {"V": math.pi / step, "VAS": math.e / step}
        assert a.weights(d, step=step) == b.weights(d, step=step)  # bit-identical
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="per_tag"):
        AdaptiveWeightState(MapoConfig(history="per_tag")).load_state_dict(a.state_dict())


def test_bad_inputs():
    st = AdaptiveWeightState(MapoConfig())
    with pytest.raises(ValueError, match="difficulty of tag 'V'"):
        st.weights({"V": float("nan")})
    st.weights({"V": 1.0}, step=5)
    with pytest.raises(ValueError, match="older"):
        st.weights({"V": 1.0}, step=4)
