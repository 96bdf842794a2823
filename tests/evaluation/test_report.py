"""``verl-modality report``: JSON schema, text tables, plots, published tables and clear errors on bad files."""

import json
import math
import re

import pytest

from verl_modality.cli import main
from verl_modality.evaluation.published import read_published_table
from verl_modality.evaluation.report import (
    SCHEMA_VERSION,
    ReportOptions,
    build_report,
    format_report,
)
from verl_modality.evaluation.results import ResultsError, read_results
from verl_modality.vocabulary import stratum_of

TOP_KEYS = {
    "schema_version", "results", "records", "options", "policies", "benchmarks", "tasks", "published", "plots",
    "warnings",
}  # fmt: skip
TASK_KEYS = {
    "queries", "samples", "pass_at_1", "accuracy", "k", "tag_mean", "per_tag", "levels", "modality_gap",
    "per_stratum", "tag_stratum", "none_answer", "fusion_gain", "decay", "unscored",
}  # fmt: skip


def obj(qid, tag, available, sample, value, tokens=10, task="qa", group=None, version=None, **kw):
    return {
        "id": qid,
        "data_source": "maple-bench",
        "benchmark": "maple_qa" if task == "qa" else None,
        "benchmark_version": version,
        "task": task,
        "tag": tag,
        "available": available,
        "stratum": stratum_of(tag, available),
        "group": group or qid,
        "sample": sample,
        "response": "... [A]",
        "parsed": "A",
        "answer": "A" if task == "qa" else "reference",
        "correct": bool(value) if task == "qa" else None,
        "score": value,
        "response_tokens": tokens,
        "gold_none": False,
        "pred_none": False,
        "policy": "exact",
        **kw,
    }


QA = [  # the set of test_metrics.qa_set: pass@1 7/12, gap 5/18
    ("q1", "V", "V", [1, 0]),
    ("q2", "V", "VA", [1, 1]),
    ("q3", "A", "A", [0, 0]),
    ("q4", "VA", "VA", [1, 0]),
    ("q5", "VA", "V", [1, 1]),
    ("q6", "VAS", "VAS", [1, 0]),
]
CAPTIONS = [  # g1 gains (VA .7 > V .5), g2 does not (VAS .4 < V .8)
    ("c1", "V", "V", "g1", 0.5),
    ("c2", "VA", "VA", "g1", 0.7),
    ("c3", "V", "V", "g2", 0.8),
    ("c4", "VAS", "VAS", "g2", 0.4),
]


def write_results(path, objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


@pytest.fixture
def results_file(tmp_path):
    objs = [
        obj(q, t, a, i, v, tokens=10 * (n + 1) + i) for n, (q, t, a, vals) in enumerate(QA) for i, v in enumerate(vals)
    ]
    objs += [obj(c, t, a, 0, s, task="caption", group=g, tokens=50) for c, t, a, g, s in CAPTIONS]
    return write_results(tmp_path / "RESULTS.jsonl", objs)


def run_cli(capsys, *argv):
    code = main(["report", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_schema_and_values(results_file, capsys):
    code, out, err = run_cli(capsys, results_file, "--json")
    assert code == 0, err
    report = json.loads(out)  # exactly one JSON object
    assert set(report) == TOP_KEYS
    assert report["schema_version"] == SCHEMA_VERSION == 1
    assert report["records"] == 16 and report["policies"] == ["exact"]
    qa, caption = report["tasks"]["qa"], report["tasks"]["caption"]
    assert set(qa) == TASK_KEYS and set(caption) == TASK_KEYS
    assert qa["pass_at_1"] == pytest.approx(7 / 12) and qa["accuracy"] == pytest.approx(7 / 12)
    # tag mean: (.75 + 0 + .75 + .5) / 4
    assert qa["tag_mean"] == pytest.approx(0.5)
    assert qa["k"] == {"k": 2, "counts": {"2": 6}, "uniform": True, "irregular_queries": []}
    assert list(qa["per_tag"]) == ["V", "A", "VA", "VAS"]
    assert set(qa["per_tag"]["V"]) == {"queries", "samples", "pass_at_1", "accuracy"}
    assert qa["modality_gap"]["gap"] == pytest.approx(5 / 18)
    assert set(qa["modality_gap"]) == {"uni", "bi", "tri", "u_b", "u_t", "b_t", "gap", "undefined"}
    assert qa["levels"]["uni"] == {"tags": ["V", "A"], "samples": 6, "accuracy": 0.5}
    assert qa["tag_stratum"]["VA"]["deficit"]["accuracy"] == 1.0
    assert qa["none_answer"]["gold_none"] == 0 and qa["fusion_gain"] is None
    assert set(qa["decay"]) == {
        "binning",
        "bins",
        "r_length",
        "r_length_note",
        "r_bins",
        "r_bins_note",
        "below",
        "above",
    }
    assert len(qa["decay"]["bins"]) == 5 and sum(b["samples"] for b in qa["decay"]["bins"]) == 12
    # captions: pooled mean score (.5 + .7 + .8 + .4) / 4 = .6; one of two videos gains
    assert caption["accuracy"] == pytest.approx(0.6)
    assert caption["fusion_gain"]["fraction"] == 0.5 and caption["none_answer"] is None
    # caption levels: uni V (.5, .8) -> .65, bi VA .7, tri VAS .4; the decay has one length only
    assert caption["modality_gap"]["u_b"] == pytest.approx(0.05 / 0.65)
    assert caption["decay"]["r_length"] is None
    bench = report["benchmarks"]
    assert [(b["benchmark"], b["task"], b["version"], b["version_source"], b["rule"]) for b in bench] == [
        ("maple_qa", "qa", "release", "registry default", "letter"),
        (None, "caption", None, None, None),
    ]
    assert report["published"] is None and report["plots"] == [] and report["warnings"] == []


def test_text_report_tables(results_file, capsys):
    code, out, _ = run_cli(capsys, results_file, "--bins", "2")
    assert code == 0
    assert "QA: 6 queries, 12 samples, k = 2; pass@1 58.33 %" in out
    assert "modality gap %: U-B 50.00, U-T 0.00, B-T 33.33, gap 27.78" in out
    assert "levels (pooled): uni 50.00 % (6), bi 75.00 % (4), tri 50.00 % (2)" in out
    assert "fusion gain (condition = available): 1 of 2 groups = 50.00 %" in out
    assert "response length bins (quantile(2))" in out
    assert "none-answers: none among the correct options or the chosen ones" in out
    qa_text = out.split("CAPTION:")[0]
    lines = {line.split()[0]: line for line in qa_text.splitlines() if line.strip()}
    assert lines["VA"].split()[1:6] == ["2", "4", "75.00", "75.00", "50.00"]  # queries, samples, pass@1, pooled, exact


def test_bins_option_and_fixed_edges(results_file):
    records = read_results(results_file)
    report = build_report(records, ReportOptions(n_bins=3))
    assert len(report["tasks"]["qa"]["decay"]["bins"]) == 3
    report = build_report(records, ReportOptions(bin_edges=(0, 35, 100)))
    # QA lengths: q1 10, 11; q2 20, 21; q3 30, 31 below 35; q4 40, 41; q5 50, 51; q6 60, 61 above
    assert [b["samples"] for b in report["tasks"]["qa"]["decay"]["bins"]] == [6, 6]
    assert report["options"]["bin_edges"] == [0, 35, 100]


def test_irregular_k_and_several_policies_warn(tmp_path):
    # q1 and q3 have 2 samples, q2 one: k = 2 and q2 is flagged
    objs = [obj(q, "V", "V", i, 1) for q in ("q1", "q3") for i in range(2)] + [obj("q2", "V", "V", 0, 0)]
    objs.append(obj("q1", "V", "VAS", 0, 1, policy="full"))
    objs.append(obj("q1", "V", "VAS", 1, 1, policy="full"))
    report = build_report(read_results(write_results(tmp_path / "r.jsonl", objs)))
    assert any("different numbers of samples" in w and "q2" in w for w in report["warnings"])
    assert any("2 policies are pooled" in w for w in report["warnings"])
    only = build_report(read_results(tmp_path / "r.jsonl"), ReportOptions(policy="full"))
    assert (
        only["records"] == 2
        and only["policies"] == ["full"]
        and only["warnings"]
        == [
            "qa: modality U-B is undefined: no bi samples",
            "qa: modality U-T is undefined: no tri samples",
            "qa: modality B-T is undefined: no tri and no bi samples",
            "qa: modality gap is undefined: it needs all three terms",
        ]
    )
    with pytest.raises(ResultsError, match="no result records match"):
        build_report(read_results(tmp_path / "r.jsonl"), ReportOptions(benchmark="mmau"))


def test_unscored_captions_are_counted_not_used(tmp_path):
    objs = [obj("c1", "V", "V", 0, 0.5, task="caption"), obj("c2", "VA", "VA", 0, None, task="caption")]
    report = build_report(read_results(write_results(tmp_path / "r.jsonl", objs)))
    caption = report["tasks"]["caption"]
    assert caption["unscored"] == 1 and caption["samples"] == 1 and caption["accuracy"] == 0.5
    assert report["benchmarks"][0]["unscored"] == 1
    assert any("1 of 2 records have no score" in w for w in report["warnings"])
    none_scored = build_report(read_results(write_results(tmp_path / "n.jsonl", objs[1:])))
    assert none_scored["tasks"] == {"qa": None, "caption": None}
    assert "1 of 1 records have no score" in format_report(none_scored)


def test_recorded_benchmark_version_is_reported(tmp_path):
    o = obj("m1", "A", "A", 0, 1, version="original") | {"benchmark": "mmau", "data_source": "mmau/test-mini"}
    report = build_report(read_results(write_results(tmp_path / "r.jsonl", [o])))
    b = report["benchmarks"][0]
    assert (b["registry_name"], b["version"], b["version_source"], b["rule"]) == (
        "mmau", "original", "results", "string_match",
    )  # fmt: skip
    assert "original" in format_report(report)


def test_scoring_rule_is_reported_and_non_official_string_match_warns(tmp_path, capsys):
    mmau = {"benchmark": "mmau", "data_source": "mmau/test-mini"}
    objs = [
        obj("m1", "A", "A", 0, 1, rule="string_match:official") | mmau,
        obj("m2", "A", "A", 0, 0, rule="string_match:lenient") | mmau,
        obj("q1", "V", "V", 0, 1, rule="letter"),
    ]
    path = write_results(tmp_path / "r.jsonl", objs)
    report = build_report(read_results(path))
    got = [(b["registry_name"], b["rule"], b["scoring_rule"], b["samples"]) for b in report["benchmarks"]]
    assert got == [
        ("mmau", "string_match", "string_match:official", 1),
        ("mmau", "string_match", "string_match:lenient", 1),
        ("maple_qa", "letter", "letter", 1),
    ]
    assert [w for w in report["warnings"] if "rule" in w] == [
        "mmau (mmau/test-mini): scored with string_match:lenient, not the benchmark's official rule "
        "(string_match:official); not comparable with published numbers"
    ]
    # records written before the rule was recorded: named as such, with a warning for string-match benchmarks
    old = write_results(tmp_path / "old.jsonl", [obj("m1", "A", "A", 0, 1) | mmau, obj("q1", "V", "V", 0, 1)])
    code, out, err = run_cli(capsys, old)
    assert code == 0, err
    assert "string_match (not recorded)" in out and "letter (not recorded)" in out
    assert "mmau (mmau/test-mini): the records do not name their scoring rule" in out
    assert "maple_qa" not in out.split("warnings:")[1]  # a letter benchmark's rule is the only one it has


def test_plots_are_written(results_file, tmp_path, capsys):
    out_dir = tmp_path / "plots"
    code, out, err = run_cli(capsys, results_file, "--json", "--plots", out_dir)
    assert code == 0, err
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["decay_caption.png", "decay_qa.png", "tag_stratum_caption.png", "tag_stratum_qa.png"]
    for p in out_dir.iterdir():
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(json.loads(out)["plots"]) == sorted(str(out_dir / n) for n in names)


def test_plots_without_matplotlib_name_the_extra(results_file, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    code, _, err = run_cli(capsys, results_file, "--plots", tmp_path / "p")
    assert code == 1 and "pip install 'verl-modality[plots]'" in err
    code, _, err = run_cli(capsys, "--table", tmp_path / "none.csv", "--plots", tmp_path / "p")
    assert code == 1 and "none.csv" in err


# MAPLE Table 1 (MAPLE-QA, Qwen2.5-Omni-3B): the "# Samples" row and two rows, "MAPO / Loss aggregation /
# Token-level" and "Curriculum learning / Full-recipe", with the reported Avg, U-B, U-T, B-T and gap Avg columns.
TABLE1_CSV = """method,V,A,S,VA,VS,AS,VAS,Avg,U-B,U-T,B-T,Gap,Time (s/step)
# Samples,552,75,76,1145,1784,171,1198,5001,,,,,
Token-level,55.79,65.78,61.40,57.85,60.26,59.06,57.76,58.68,3.20,0.52,2.60,2.11,389.11
Full-recipe,56.22,67.55,63.16,57.50,60.58,56.92,57.71,58.72,1.82,0.81,2.58,1.74,164.72
"""
PAPER = {"Token-level": (58.68, 3.20, 0.52, 2.60, 2.11), "Full-recipe": (58.72, 1.82, 0.81, 2.58, 1.74)}


def check_table1(rows):
    for row in rows:
        g = row["modality_gap"]
        ours = tuple(round(100 * x, 2) for x in (row["pooled"], g["u_b"], g["u_t"], g["b_t"], g["gap"]))
        assert ours == PAPER[row["name"]], row["name"]  # pooling reproduces the paper to its 2 decimals


def test_published_table_reproduces_maple_table1_gap(tmp_path, capsys):
    path = tmp_path / "table1.csv"
    path.write_text(TABLE1_CSV)
    table = read_published_table(path)
    assert table.rows["Full-recipe"]["V"] == (pytest.approx(0.5622), 552)
    assert table.ignored_columns == ["Time (s/step)"]
    code, out, err = run_cli(capsys, "--table", path, "--json")
    assert code == 0, err
    published = json.loads(out)["published"]
    check_table1(published["rows"])
    full = published["rows"][1]
    # uni = (552*56.22 + 75*67.55 + 76*63.16) / 703 = 57.9141 %, bi = 59.3519 %, tri = 57.71 %
    assert full["levels"]["uni"]["accuracy"] == pytest.approx((552 * 56.22 + 75 * 67.55 + 76 * 63.16) / 703 / 100)
    assert full["levels"]["bi"]["samples"] == 1145 + 1784 + 171
    assert all(abs(d) < 0.00005 for d in full["difference"].values())  # below the paper's 0.01 % rounding
    code, text, _ = run_cli(capsys, "--table", path)
    assert "Full-recipe" in text and "1.74" in text and "reported" in text


def test_published_table_json_and_long_forms(tmp_path):
    header, samples, *rows = [line.split(",") for line in TABLE1_CSV.strip().splitlines()]
    tags = header[1:8]
    as_json = {
        "samples": dict(zip(tags, map(int, samples[1:8]), strict=True)),
        "rows": {r[0]: dict(zip(tags, map(float, r[1:8]), strict=True)) for r in rows},
    }
    (tmp_path / "t.json").write_text(json.dumps(as_json))
    long_lines = ["row,tag,accuracy,samples"] + [
        f"{r[0]},{t},{a},{n}" for r in rows for t, a, n in zip(tags, r[1:8], samples[1:8], strict=True)
    ]
    (tmp_path / "t.csv").write_text("\n".join(long_lines) + "\n")
    for name in ("t.json", "t.csv"):
        report = build_report(None, published=read_published_table(tmp_path / name))
        check_table1(report["published"]["rows"])
        assert report["tasks"] == {"qa": None, "caption": None}


def test_results_and_table_together_add_this_run(results_file, tmp_path):
    path = tmp_path / "table1.csv"
    path.write_text(TABLE1_CSV)
    report = build_report(read_results(results_file), published=read_published_table(path))
    run = report["published"]["rows"][-1]
    assert run["name"] == "this run (qa)" and not run["from_table"]
    assert run["modality_gap"]["gap"] == pytest.approx(5 / 18) and run["reported"] == {}


def test_published_table_without_a_count_names_file_row_and_column(tmp_path, capsys):
    short = tmp_path / "short.csv"  # the samples row stops before column A
    short.write_text("method,V,A,S\n# Samples,552\nFull-recipe,56.22,67.55,63.16\n")
    code, _, err = run_cli(capsys, "--table", short)
    assert code == 1
    assert err == (
        f"report: {short}:3: row 'Full-recipe' has an accuracy in column 'A' but the samples row ({short}:2) has "
        "no count for it\n"
    )
    as_json = tmp_path / "t.json"
    as_json.write_text(json.dumps({"samples": {"V": 552}, "rows": {"Full-recipe": {"V": 56.22, "S": 63.16}}}))
    code, _, err = run_cli(capsys, "--table", as_json, "--json")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"{as_json}: rows.Full-recipe: row 'Full-recipe' has an accuracy in column 'S'" in err
    # a tag no row reports needs no count ("-" or empty in the samples row)
    ok = tmp_path / "ok.csv"
    ok.write_text("method,V,A\n# Samples,552,-\nx,50,\n")
    assert read_published_table(ok).rows == {"x": {"V": (0.5, 552)}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tag,accuracy\nV,50\n", "missing field 'samples'"),
        ("tag,accuracy,samples\nVX,50,3\n", "tag 'VX' is not one of"),
        ("tag,accuracy,samples\nV,150,3\n", "not a percentage"),
        ("tag,accuracy,samples\nV,50,0\n", "not a positive integer"),
        ("method,V,A\nx,50,40\n", "no sample-count row"),
    ],
)
def test_bad_published_tables(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_published_table(path)


def _bad(field, value):
    o = obj("q1", "V", "V", 0, 1)
    if value is KeyError:
        del o[field]
    else:
        o[field] = value
    return o


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_bad("tag", KeyError), "missing field\\(s\\) 'tag'"),
        (_bad("tag", "VX"), "field 'tag': 'VX' is not a modality tag"),
        (_bad("tag", "AV"), "not in canonical V/A/S order \\(write 'VA'\\)"),
        (_bad("score", math.nan), "field 'score': nan is not a finite number"),
        (_bad("score", 0.5), "disagrees with correct=True"),
        (_bad("score", None), "field 'score': None must be a number for a QA record"),
        (_bad("stratum", "superset"), "field 'stratum': 'superset' contradicts tag 'V' with available 'V'"),
        (_bad("correct", None), "must be true or false for a QA record"),
        (_bad("sample", "0"), "field 'sample': '0' is not of type integer"),
        (_bad("gold_none", 1), "field 'gold_none': 1 is not of type boolean"),
        (_bad("task", "asr"), "field 'task': 'asr' is not one of qa, caption"),
        (_bad("rule", "strict"), "field 'rule': 'strict' is not one of string_match:official, string_match:lenient"),
        (_bad("rule", 1), "field 'rule': 1 is not of type string or null"),
    ],
)
def test_bad_result_files_name_line_and_field(tmp_path, capsys, record, message):
    good = obj("q0", "A", "A", 0, 1)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(record) + "\n")  # the bad record is on line 3
    code, _, err = run_cli(capsys, path)
    assert code == 1
    assert f"{path}:3: " in err
    assert re.search(message, err), err


def test_bad_result_files_structure(tmp_path):
    a = obj("q1", "V", "V", 0, 1)
    cases = [
        ("{not json\n", "bad.jsonl:1: not a JSON line"),
        ("", "no result records"),
        (json.dumps(a) + "\n" + json.dumps(a) + "\n", "bad.jsonl:2: id 'q1' sample 0 .* repeats .*bad.jsonl:1"),
        (
            json.dumps(a) + "\n" + json.dumps(obj("q1", "V", "VA", 1, 1)) + "\n",
            "bad.jsonl:2: field 'available': 'VA' differs from 'V' of the same id 'q1' at .*bad.jsonl:1",
        ),
        (
            json.dumps(obj("q1", "V", "V", 0, 1, rule="letter")) + "\n" + json.dumps(obj("q1", "V", "V", 1, 1)) + "\n",
            "bad.jsonl:2: field 'rule': None differs from 'letter' of the same id 'q1'",
        ),
    ]
    for text, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(text)
        with pytest.raises(ResultsError, match=message):
            read_results(path)


def test_report_needs_an_input(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2 and "give RESULTS.jsonl" in err
