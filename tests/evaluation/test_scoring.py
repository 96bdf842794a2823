"""Result records from hand-made generations: QA scoring with the training reward's rules and a benchmark's,
none-answers, groups and the rule each record names."""

from __future__ import annotations

from verl_modality.data import schema
from verl_modality.evaluation.config import EvalConfig
from verl_modality.evaluation.scoring import make_records
from verl_modality.models.generation import Generation


def _row(**info):
    return schema.Sample.create(
        "q-1", "Which?", ["red", "green", "none of the above", "blue"], "C", "V", videos=["v.mp4"], extra_info=info
    ).to_row()


def _gens(*texts):
    return [Generation(t, [1] * (i + 1), i + 1, False) for i, t in enumerate(texts)]


def test_scoring_none_answers_and_groups():
    cfg = EvalConfig("m", "d", "o", k=3)
    row = _row(none_index=2, source_id="item-7", stratum="deficit")
    recs = make_records(row, row, _gens("It is [C].", "<answer>A</answer>", "no idea"), cfg, "exact", None, None)
    assert [(r["parsed"], r["correct"], r["score"]) for r in recs] == [
        ("C", True, 1.0),
        ("A", False, 0.0),
        (None, False, 0.0),
    ]
    assert [(r["gold_none"], r["pred_none"]) for r in recs] == [(True, True), (True, False), (True, False)]
    assert {r["group"] for r in recs} == {"item-7"} and [r["response_tokens"] for r in recs] == [1, 2, 3]
    plain = make_records(_row(), _row(), _gens("[C]"), cfg, "exact", None, None)[0]
    assert (plain["gold_none"], plain["pred_none"], plain["group"]) == (False, False, "q-1")


def test_benchmark_scorer_is_used(tmp_path):
    from verl_modality.evaluation.scorers import get_benchmark

    cfg = EvalConfig("m", "d", "o", k=2)
    row = _row()
    mmau = get_benchmark("mmau")
    recs = make_records(row, row, _gens("The sound is none of the above.", "[B]"), cfg, "exact", mmau, None)
    # official rule by default: the raw "[B]" holds no option's words, so it names nothing
    assert [(r["parsed"], r["correct"]) for r in recs] == [("C", True), (None, False)]
    assert {(r["benchmark"], r["benchmark_version"], r["rule"]) for r in recs} == {
        ("mmau", mmau.version, "string_match:official")
    }
    lenient = EvalConfig("m", "d", "o", k=2, rule="lenient")
    recs = make_records(row, row, _gens("The sound is none of the above.", "[B]"), lenient, "exact", mmau, None)
    assert [(r["parsed"], r["correct"], r["rule"]) for r in recs] == [
        ("C", True, "string_match:lenient"),
        ("B", False, "string_match:lenient"),
    ]
    # the option-letter rule does not read option texts outside an <answer> tag
    plain = make_records(row, row, _gens("The sound is none of the above."), cfg, "exact", None, None)[0]
    assert (plain["correct"], plain["rule"]) == (False, "letter")
    # an MMAU-style source without --benchmark: the training reward's string match, read the official way
    mmau_row = {**row, "data_source": "mmau/test-mini"}
    rec = make_records(mmau_row, mmau_row, _gens("[C]"), cfg, "exact", None, None)[0]
    assert (rec["parsed"], rec["correct"], rec["rule"]) == (None, False, "string_match:official")


def test_benchmark_answer_letter_is_not_read_as_an_option_text():
    """MMAU test-mini item 6976d332: options C, Gm, Cm7b5, Eb/G, gold Cm7b5 (letter C); the letter must not be
    mistaken for the option whose text is "C"."""
    from verl_modality.evaluation.scorers import get_benchmark

    row = schema.Sample.create(
        "6976d332", "Which chord?", ["C", "Gm", "Cm7b5", "Eb/G"], "C", "A", audios=["a.wav"]
    ).to_row()
    cfg = EvalConfig("m", "d", "o", k=2)
    recs = make_records(row, row, _gens("Cm7b5", "C"), cfg, "exact", get_benchmark("mmau"), None)
    assert [(r["parsed"], r["correct"]) for r in recs] == [("C", True), ("A", False)]
