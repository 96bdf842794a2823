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


def test_per_tag_window_drops_old_steps_by_hand():
    cfg = MapoConfig(adaptive_weights=True, history="per_tag", history_window=3)
    st = AdaptiveWeightState(cfg)  # window from the config
    assert st.window == 3
    seq = [(1, {"V": 0.9}), (2, {"V": 0.5, "A": 2.0}), (4, {"V": 0.1}), (5, {"V": 0.4, "A": 1.0})]
    expected = []
    kept = {"V": [], "A": []}
    for step, ds in seq:
        for tag in kept:
            kept[tag] = [(s, d) for s, d in kept[tag] if s > step - 3]
        for tag, d in ds.items():
            kept[tag].append((step, d))
        out = {}
        for tag, d in ds.items():
            m, s = pop_stats([v for _, v in kept[tag]])
            out[tag] = sig((d - m) / (s + cfg.eps))
        expected.append(out)
        got = st.weights(ds, step=step)
        assert got.keys() == out.keys()
        for tag in out:
            assert got[tag] == pytest.approx(out[tag], rel=1e-12)
    # step 5 keeps steps 3-5: V has [0.1, 0.4], A has [1.0] only (its step-2 value dropped) -> w_A = 0.5
    assert st.history("V") == [0.1, 0.4] and st.history("A") == [1.0]
    assert expected[-1]["A"] == 0.5
    m, s = pop_stats([0.1, 0.4])
    assert expected[-1]["V"] == pytest.approx(sig((0.4 - m) / (s + cfg.eps)))


def test_step_counter_and_rejected_input_leaves_state_unchanged():
    st = AdaptiveWeightState(MapoConfig(), window=2)
    st.weights({"V": 1.0})
    st.weights({"V": 2.0})
    st.weights({"V": 4.0})  # internal steps 1, 2, 3: step 1 is out of the window
    assert st.steps_seen == 3 and st.history() == [2.0, 4.0]
    before = st.state_dict()
    with pytest.raises(ValueError, match="difficulty of tag 'A'"):
        st.weights({"V": 1.0, "A": float("inf")}, step=4)
    assert st.state_dict() == before


def test_state_round_trip_per_tag_with_unbounded_window():
    cfg = MapoConfig(adaptive_weights=True, history="per_tag")
    a = AdaptiveWeightState(cfg)
    for step in range(1, 8):
        a.weights({"V": 1 / (step + 0.1), "AS": math.sqrt(step) / 7, "VAS": 0.3 + 1e-13 * step}, step=step)
    text = json.dumps(a.state_dict())
    b = AdaptiveWeightState(cfg)
    b.load_state_dict(json.loads(text))
    assert b.window is None and b.steps_seen == 7
    for step in range(8, 12):
        d = {"V": math.log(step), "AS": 1 / step}
        assert a.weights(d, step=step) == b.weights(d, step=step)


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        AdaptiveWeightState(MapoConfig(), window=0)
    with pytest.raises(ValueError, match="window"):
        AdaptiveWeightState(MapoConfig(), window=1.5)
