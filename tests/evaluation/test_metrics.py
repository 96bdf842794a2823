"""Metrics on small hand-made result sets; every expected number is worked out by hand in the comments."""

import math

import pytest

from verl_modality.evaluation import metrics as M
from verl_modality.evaluation.results import ResultRecord, ResultsError, parse_record
from verl_modality.vocabulary import stratum_of


def rec(
    qid,
    tag,
    available,
    sample,
    value,
    *,
    tokens=10,
    group=None,
    task="qa",
    gold_none=False,
    pred_none=False,
    policy="exact",
):
    """One result record; ``value`` is correctness (QA) or the judge score (caption)."""
    obj = {
        "id": qid,
        "data_source": "maple-bench",
        "benchmark": "maple_qa" if task == "qa" else None,
        "benchmark_version": None,
        "task": task,
        "tag": tag,
        "available": available,
        "stratum": stratum_of(tag, available),
        "group": group or qid,
        "sample": sample,
        "response": "[A]",
        "parsed": "A",
        "answer": "A" if task == "qa" else "a reference caption",
        "correct": bool(value) if task == "qa" else None,
        "score": float(value),
        "response_tokens": tokens,
        "gold_none": gold_none,
        "pred_none": pred_none,
        "policy": policy,
    }
    return parse_record(obj)


def qa_set():
    """Six queries, k = 2 samples each."""
    spec = [
        ("q1", "V", "V", [1, 0]),  # exact
        ("q2", "V", "VA", [1, 1]),  # superset
        ("q3", "A", "A", [0, 0]),  # exact
        ("q4", "VA", "VA", [1, 0]),  # exact
        ("q5", "VA", "V", [1, 1]),  # deficit
        ("q6", "VAS", "VAS", [1, 0]),  # exact
    ]
    return [rec(q, t, a, i, v) for q, t, a, vals in spec for i, v in enumerate(vals)]


def test_pass_at_1_overall_and_per_tag():
    records = qa_set()
    overall = M.accuracy(records)
    # 7 correct of 12 samples; query means .5, 1, 0, .5, 1, .5 -> 3.5 / 6
    assert (overall.queries, overall.samples) == (6, 12)
    assert overall.accuracy == pytest.approx(7 / 12)
    assert overall.pass_at_1 == pytest.approx(3.5 / 6)
    per_tag = M.accuracy_by_tag(records)
    assert list(per_tag) == ["V", "A", "VA", "VAS"]  # canonical order, not file order
    # V: q1 (1, 0) + q2 (1, 1) = 3/4; A: 0/2; VA: q4 + q5 = 3/4; VAS: 1/2
    assert {t: a.accuracy for t, a in per_tag.items()} == {"V": 0.75, "A": 0.0, "VA": 0.75, "VAS": 0.5}
    assert per_tag["V"].queries == 2 and per_tag["V"].pass_at_1 == 0.75
    k = M.sample_count(records)
    assert (k.k, k.uniform, k.irregular, k.counts) == (2, True, [], {2: 6})


def test_pass_at_1_with_differing_sample_counts_is_flagged():
    records = [rec("q1", "V", "V", i, v) for i, v in enumerate([1, 1, 0])] + [rec("q2", "V", "V", 0, 0)]
    acc = M.accuracy(records)
    # pass@1 = mean(2/3, 0) = 1/3; pooled = 2 correct of 4 samples
    assert acc.pass_at_1 == pytest.approx(1 / 3)
    assert acc.accuracy == pytest.approx(0.5)
    k = M.sample_count(records)
    # one query with 3 samples, one with 1: a tie, the larger k wins; q2 is the odd one
    assert (k.k, k.uniform, k.irregular, k.counts) == (3, False, ["q2"], {1: 1, 3: 1})


def test_same_id_under_two_policies_is_two_queries():
    records = [rec("q1", "V", "V", 0, 1, policy="exact"), rec("q1", "V", "VAS", 0, 0, policy="full")]
    assert M.accuracy(records).queries == 2


def test_modality_gap_pools_samples_of_each_level():
    per_tag = {t: (a.accuracy, a.samples) for t, a in M.accuracy_by_tag(qa_set()).items()}
    levels = M.pool_levels(per_tag)
    # uni = (V 3 + A 0 correct) / 6 = .5; bi = VA .75 (4 samples); tri = VAS .5
    assert levels["uni"].accuracy == pytest.approx(0.5) and levels["uni"].samples == 6
    assert levels["uni"].tags == ["V", "A"]
    assert levels["bi"].accuracy == pytest.approx(0.75) and levels["tri"].accuracy == pytest.approx(0.5)
    gap = M.gap_from_levels(levels)
    # U-B = |.75 - .5| / .5 = .5; U-T = |.5 - .5| / .5 = 0; B-T = |.5 - .75| / .75 = 1/3; mean = 5/18
    assert gap.u_b == pytest.approx(0.5)
    assert gap.u_t == pytest.approx(0.0)
    assert gap.b_t == pytest.approx(1 / 3)
    assert gap.gap == pytest.approx(5 / 18)
    assert gap.undefined == []


def test_pooling_differs_from_averaging_tags():
    # uni: V 1.0 on 1 sample, A 0.0 on 3 samples -> pooled 1/4, not the tag mean 1/2
    levels = M.pool_levels({"V": (1.0, 1), "A": (0.0, 3)})
    assert levels["uni"].accuracy == pytest.approx(0.25)
    assert levels["bi"] is None and levels["tri"] is None


def test_modality_gap_with_missing_levels_is_undefined_not_invented():
    gap = M.modality_gap(uni=0.5, bi=None, tri=0.4)
    assert gap.u_t == pytest.approx(0.2)  # |.4 - .5| / .5
    assert gap.u_b is None and gap.b_t is None and gap.gap is None
    assert any("U-B is undefined: no bi" in n for n in gap.undefined)
    assert any("B-T is undefined" in n for n in gap.undefined)
    zero = M.modality_gap(uni=0.0, bi=0.5, tri=0.5)
    assert zero.u_b is None and zero.u_t is None and zero.b_t == 0.0
    assert any("uni accuracy is 0" in n for n in zero.undefined)


def test_strata_and_tag_stratum_table():
    records = qa_set()
    strata = M.accuracy_by_stratum(records)
    # exact: q1 1 + q3 0 + q4 1 + q6 1 = 3 of 8; superset q2 2/2; deficit q5 2/2
    assert list(strata) == ["exact", "superset", "deficit"]
    assert strata["exact"].accuracy == pytest.approx(3 / 8) and strata["exact"].samples == 8
    assert strata["superset"].accuracy == 1.0 and strata["deficit"].accuracy == 1.0
    table = M.tag_stratum_table(records)
    assert {t: {s: a.accuracy for s, a in row.items()} for t, row in table.items()} == {
        "V": {"exact": 0.5, "superset": 1.0},
        "A": {"exact": 0.0},
        "VA": {"exact": 0.5, "deficit": 1.0},
        "VAS": {"exact": 0.5},
    }


def test_none_answer_precision_recall():
    records = [
        rec("q1", "V", "", 0, 1, gold_none=True, pred_none=True),  # deficit, found
        rec("q2", "V", "", 0, 0, gold_none=True, pred_none=False),  # deficit, missed
        rec("q3", "V", "V", 0, 0, gold_none=False, pred_none=True),  # false alarm
        rec("q4", "V", "V", 0, 1),
        rec("q5", "V", "V", 0, 1),
    ]
    na = M.none_answer_stats(records)
    # TP 1; predicted 2 -> precision 1/2; gold 2 -> recall 1/2; F1 1/2
    assert (na.gold_none, na.pred_none, na.true_positive) == (2, 2, 1)
    assert na.precision == 0.5 and na.recall == 0.5 and na.f1 == pytest.approx(0.5)
    none = M.none_answer_stats(records[3:])
    assert none.precision is None and none.recall is None and none.f1 is None


def cap(group, tag, available, sample, score, qid=None):
    return rec(qid or f"{group}-{available or '0'}-{tag}", tag, available, sample, score, group=group, task="caption")


def test_fusion_gain_best_multi_vs_best_uni():
    records = [
        # g1: V mean(.4, .6) = .5, A .3 -> best uni .5; VA .7 -> gain, margin +.2
        cap("g1", "V", "V", 0, 0.4),
        cap("g1", "V", "V", 1, 0.6),
        cap("g1", "A", "A", 0, 0.3),
        cap("g1", "VA", "VA", 0, 0.7),
        # g2: V .8 vs VAS .5 -> no gain, margin -.3
        cap("g2", "V", "V", 0, 0.8),
        cap("g2", "VAS", "VAS", 0, 0.5),
        # g3: A .5 vs AS .5 -> a tie is not a gain, margin 0
        cap("g3", "A", "A", 0, 0.5),
        cap("g3", "AS", "AS", 0, 0.5),
        cap("g4", "VA", "VA", 0, 0.9),  # only multi-modal: not compared
        cap("g5", "S", "S", 0, 0.9),  # only uni-modal: not compared
    ]
    fg = M.fusion_gain(records)
    assert (fg.groups, fg.compared, fg.gains, fg.only_uni, fg.only_multi) == (5, 3, 1, 1, 1)
    assert fg.fraction == pytest.approx(1 / 3)
    assert fg.mean_margin == pytest.approx((0.2 - 0.3 + 0.0) / 3)


def test_fusion_gain_condition_field():
    # tag V shown with V and A (superset): multi-modal by what was shown, uni-modal by its tag
    records = [cap("g", "V", "V", 0, 0.2), cap("g", "V", "VA", 0, 0.9)]
    assert M.fusion_gain(records, "available").gains == 1
    by_tag = M.fusion_gain(records, "tag")
    assert by_tag.compared == 0 and by_tag.only_uni == 1 and by_tag.fraction is None
    with pytest.raises(ValueError, match="fusion condition"):
        M.fusion_gain(records, "stratum")


def test_decay_quantile_bins_and_correlations():
    records = [rec(f"q{n}", "A", "A", 0, v, tokens=n) for n, v in [(10, 1), (20, 1), (30, 0), (40, 0)]]
    d = M.perception_decay(records, n_bins=2)
    # median edge 25: [10, 25) holds 10, 20 (both right); [25, 40] holds 30, 40 (both wrong)
    assert [(b.lo, b.hi, b.centre, b.samples, b.accuracy) for b in d.bins] == [
        (10.0, 25.0, 17.5, 2, 1.0),
        (25.0, 40.0, 32.5, 2, 0.0),
    ]
    # x deviations -15 -5 5 15, y deviations .5 .5 -.5 -.5: r = -20 / (sqrt(500) * 1)
    assert d.r_length == pytest.approx(-20 / math.sqrt(500))
    assert d.r_bins == pytest.approx(-1.0)
    assert d.binning == "quantile(2)"


def test_decay_fixed_edges_counts_samples_outside():
    lengths = [(10, 1), (20, 1), (30, 0), (40, 0), (60, 1)]
    records = [rec(f"q{n}", "A", "A", 0, v, tokens=n) for n, v in lengths]
    d = M.perception_decay(records, edges=[0, 15, 50])
    # [0, 15): 10 -> 1.0; [15, 50]: 20, 30, 40 -> 1/3; 60 lies above the last edge
    assert [(b.samples, b.accuracy) for b in d.bins] == [(1, 1.0), (3, pytest.approx(1 / 3))]
    assert (d.below, d.above) == (0, 1)
    # over all five: x dev -22 -12 -2 8 28, y dev .4 .4 -.6 -.6 .4: sum = -6, sum x^2 = 1480, sum y^2 = 1.2
    assert d.r_length == pytest.approx(-6 / math.sqrt(1480 * 1.2))
    with pytest.raises(ValueError, match="strictly increasing"):
        M.perception_decay(records, edges=[0, 50, 50])


def test_decay_with_one_length_has_undefined_r():
    records = [rec(f"q{i}", "A", "A", 0, i % 2, tokens=7) for i in range(4)]
    d = M.perception_decay(records, n_bins=5)
    assert len(d.bins) == 1 and d.bins[0].samples == 4 and d.bins[0].accuracy == 0.5
    assert d.r_length is None and "fewer than 2 distinct response lengths" in d.r_length_note
    assert d.r_bins is None and "fewer than 2 non-empty bins" in d.r_bins_note
    same = M.perception_decay([rec(f"q{i}", "A", "A", 0, 1, tokens=i) for i in range(4)], n_bins=2)
    assert same.r_length is None and same.r_length_note == "undefined: every sample has the same correctness (or score)"
    assert same.r_bins is None and "distinct y values" in same.r_bins_note


def test_quantile_bins_are_equal_count():
    edges = M.quantile_edges(list(range(1, 101)), 5)
    assert len(edges) == 6
    records = [rec(f"q{n}", "A", "A", 0, 1, tokens=n) for n in range(1, 101)]
    assert [b.samples for b in M.perception_decay(records, n_bins=5).bins] == [20] * 5


def test_pearson_matches_numpy():
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    r, note = M.pearson(list(x), list(y))
    assert note is None and r == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert M.pearson([1, 2, 3], [1, 1, 1]) == (None, "undefined: fewer than 2 distinct y values")


def test_caption_value_is_the_score():
    r = cap("g", "V", "V", 0, 0.6)
    assert isinstance(r, ResultRecord) and r.correct is None and r.value == 0.6
    obj = {k: v for k, v in r.__dict__.items() if k != "extra"} | {"correct": True}
    with pytest.raises(ResultsError, match="'correct'.*null for a caption"):
        parse_record(obj)
