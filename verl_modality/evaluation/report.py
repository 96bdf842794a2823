"""``verl-modality report``: the evaluation report of a ``RESULTS.jsonl`` file and/or a published per-tag table.

:func:`build_report` turns result records into one JSON-ready dict (schema :data:`SCHEMA_VERSION`, every key is
documented in ``docs/evaluation.md``); :func:`format_report` renders it as text tables. A published table (per-tag
accuracy in % with sample counts, as papers print them; :mod:`verl_modality.evaluation.published`) goes through the
same pooling and modality-gap code, so a paper's averages and gap columns can be recomputed and compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from verl_modality.evaluation import metrics as M
from verl_modality.evaluation.published import REPORTED_KEYS, PublishedTable, published_section, read_published_table
from verl_modality.evaluation.results import ResultRecord, ResultsError, read_results
from verl_modality.evaluation.scorers import BENCHMARKS, benchmark_for_data_source, scoring_rule_name
from verl_modality.vocabulary import LEVELS, STRATA, TAGS

#: Version of the ``--json`` schema; bumped whenever a key changes meaning or disappears.
SCHEMA_VERSION = 1
TASK_NAMES = ("qa", "caption")
#: The rule that makes a string-match benchmark's numbers comparable with the published ones.
OFFICIAL_RULE = scoring_rule_name(True, "official")


@dataclass(frozen=True)
class ReportOptions:
    """Options of the report."""

    # perception decay: equal-count quantile bins of response length (docs/method.md §7, MPAR^2 bins by token length)
    n_bins: int = 5
    bin_edges: tuple[float, ...] | None = None  # fixed bin edges instead of quantiles
    # fusion gain: the field that says whether a caption condition is uni- or multi-modal (MAPLE App. C.3)
    fusion_condition: str = "available"
    benchmark: str | None = None  # only records of this benchmark (registry name, benchmark field or data_source)
    policy: str | None = None  # only records of this policy


# ---------------------------------------------------------------------------------------------------------------
# results -> report dict


def _benchmarks(records: Sequence[ResultRecord]) -> list[dict[str, Any]]:
    out = []
    groups = M.group_by(records, lambda r: (r.benchmark, r.data_source, r.task, r.benchmark_version, r.rule))
    for (bench, source, task, version, scoring_rule), recs in groups.items():
        # the registry holds multiple-choice scorers; a caption set keeps only what its records say
        name = (bench if bench in BENCHMARKS else benchmark_for_data_source(source)) if task == "qa" else None
        registry = BENCHMARKS.get(name) if name else None
        version_source = "results" if version is not None else None
        if version is None and registry is not None:
            version, version_source = registry.version, "registry default"
        scored = [r for r in recs if r.score is not None]
        acc = M.accuracy(scored)
        out.append(
            {
                "benchmark": bench,
                "registry_name": name,
                "data_source": source,
                "task": task,
                "version": version,
                "version_source": version_source,
                "rule": registry.rule if registry else None,
                "scoring_rule": scoring_rule,
                **acc.as_dict(),
                "unscored": len(recs) - len(scored),
            }
        )
    return out


def _rule_warnings(benchmarks: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sentences for string-match benchmarks whose records were not scored with the official rule."""
    out = []
    for b in benchmarks:
        if b["rule"] != "string_match" or b["scoring_rule"] == OFFICIAL_RULE:
            continue
        name = f"{b['registry_name']} ({b['data_source']})"
        if b["scoring_rule"] is None:
            out.append(
                f"{name}: the records do not name their scoring rule (written before eval recorded it, when string "
                "match read replies leniently); re-run eval to score with the benchmark's official rule"
            )
        else:
            out.append(
                f"{name}: scored with {b['scoring_rule']}, not the benchmark's official rule ({OFFICIAL_RULE}); "
                "not comparable with published numbers"
            )
    return out


def _task_section(records: Sequence[ResultRecord], task: str, options: ReportOptions) -> dict[str, Any]:
    overall = M.accuracy(records)
    per_tag = M.accuracy_by_tag(records)
    levels = M.pool_levels({t: (a.accuracy, a.samples) for t, a in per_tag.items()})
    tag_values = [a.accuracy for a in per_tag.values()]
    return {
        **overall.as_dict(),
        "k": M.sample_count(records).as_dict(),
        "tag_mean": math.fsum(tag_values) / len(tag_values),
        "per_tag": {t: a.as_dict() for t, a in per_tag.items()},
        "levels": {lvl: (v.as_dict() if v else None) for lvl, v in levels.items()},
        "modality_gap": M.gap_from_levels(levels).as_dict(),
        "per_stratum": {s: a.as_dict() for s, a in M.accuracy_by_stratum(records).items()},
        "tag_stratum": {t: {s: a.as_dict() for s, a in row.items()} for t, row in M.tag_stratum_table(records).items()},
        "none_answer": M.none_answer_stats(records).as_dict() if task == "qa" else None,
        "fusion_gain": M.fusion_gain(records, options.fusion_condition).as_dict() if task == "caption" else None,
        "decay": M.perception_decay(records, options.n_bins, options.bin_edges).as_dict(),
    }


def _select(records: Sequence[ResultRecord], options: ReportOptions) -> list[ResultRecord]:
    out = list(records)
    if options.benchmark is not None:
        b = options.benchmark
        out = [
            r
            for r in out
            if b in (r.benchmark, r.data_source)
            or (r.benchmark is None and benchmark_for_data_source(r.data_source) == b)
        ]
    if options.policy is not None:
        out = [r for r in out if r.policy == options.policy]
    if not out:
        raise ResultsError(
            f"no result records match benchmark={options.benchmark!r} policy={options.policy!r} "
            f"(the file has benchmarks {sorted({str(r.benchmark or r.data_source) for r in records})}, "
            f"policies {sorted({r.policy for r in records})})"
        )
    return out


def build_report(
    records: Sequence[ResultRecord] | None,
    options: ReportOptions | None = None,
    source: str | os.PathLike | None = None,
    published: PublishedTable | None = None,
) -> dict[str, Any]:
    """The report dict (``--json`` output): see ``docs/evaluation.md`` for every key."""
    options = options or ReportOptions()
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "results": str(source) if source is not None else None,
        "records": 0,
        "options": {
            "bins": options.n_bins,
            "bin_edges": list(options.bin_edges) if options.bin_edges is not None else None,
            "fusion_condition": options.fusion_condition,
            "benchmark": options.benchmark,
            "policy": options.policy,
        },
        "policies": [],
        "benchmarks": [],
        "tasks": {t: None for t in TASK_NAMES},
        "published": None,
        "plots": [],
        "warnings": [],
    }
    warnings: list[str] = report["warnings"]
    if records is not None:
        records = _select(records, options)
        report["records"] = len(records)
        report["policies"] = sorted({r.policy for r in records})
        report["benchmarks"] = _benchmarks(records)
        warnings.extend(_rule_warnings(report["benchmarks"]))
        if len(report["policies"]) > 1:
            warnings.append(f"results of {len(report['policies'])} policies are pooled; use --policy to pick one")
        for task, recs in M.group_by(records, lambda r: r.task).items():
            scored = [r for r in recs if r.score is not None]
            if len(scored) < len(recs):
                warnings.append(
                    f"{task}: {len(recs) - len(scored)} of {len(recs)} records have no score (judge did not score "
                    "them); they are left out of the metrics"
                )
            if not scored:
                continue
            section = _task_section(scored, task, options)
            section["unscored"] = len(recs) - len(scored)
            report["tasks"][task] = section
            k = section["k"]
            if not k["uniform"]:
                shown = ", ".join(k["irregular_queries"][:10])
                more = len(k["irregular_queries"]) - 10
                warnings.append(
                    f"{task}: queries have different numbers of samples {k['counts']} (k = {k['k']}); "
                    f"{len(k['irregular_queries'])} differ: {shown}{f' and {more} more' if more > 0 else ''}"
                )
            for note in section["modality_gap"]["undefined"]:
                warnings.append(f"{task}: modality {note}")
    if published is not None:
        run_rows = {}
        qa = report["tasks"]["qa"]
        if qa is not None:
            run_rows["this run (qa)"] = {t: (a["accuracy"], a["samples"]) for t, a in qa["per_tag"].items()}
        report["published"] = published_section(published, run_rows)
    return report


# ---------------------------------------------------------------------------------------------------------------
# text


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """Right-aligned columns (the first left-aligned)."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    out = []
    for r in cells:
        out.append(
            indent
            + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    return "\n".join(out)


def _format_task(task: str, s: Mapping[str, Any]) -> list[str]:
    unit = "accuracy" if task == "qa" else "mean judge score"
    k = s["k"]
    lines = [
        f"{task.upper()}: {s['queries']} queries, {s['samples']} samples, k = {k['k']}"
        + ("" if k["uniform"] else f" (NOT uniform: {k['counts']})")
        + f"; pass@1 {_pct(s['pass_at_1'])} %, pooled {unit} {_pct(s['accuracy'])} %, tag mean {_pct(s['tag_mean'])} %"
    ]
    strata = [st for st in STRATA if st in s["per_stratum"]]
    rows = []
    for tag, a in s["per_tag"].items():
        cells = s["tag_stratum"].get(tag, {})
        rows.append(
            [tag, a["queries"], a["samples"], _pct(a["pass_at_1"]), _pct(a["accuracy"])]
            + [f"{_pct(cells[st]['accuracy'])} ({cells[st]['samples']})" if st in cells else "-" for st in strata]
        )
    rows.append(["pooled", s["queries"], s["samples"], _pct(s["pass_at_1"]), _pct(s["accuracy"])])
    rows[-1] += [f"{_pct(s['per_stratum'][st]['accuracy'])} ({s['per_stratum'][st]['samples']})" for st in strata]
    lines.append(
        format_table(["tag", "queries", "samples", "pass@1 %", "pooled %", *[f"{st} %" for st in strata]], rows)
    )
    lv = s["levels"]
    lines.append(
        "  levels (pooled): "
        + ", ".join(
            f"{lvl} {_pct(lv[lvl]['accuracy'])} % ({lv[lvl]['samples']})" if lv[lvl] else f"{lvl} -" for lvl in LEVELS
        )
    )
    g = s["modality_gap"]
    lines.append(
        f"  modality gap %: U-B {_pct(g['u_b'])}, U-T {_pct(g['u_t'])}, B-T {_pct(g['b_t'])}, gap {_pct(g['gap'])}"
    )
    lines += [f"    {note}" for note in g["undefined"]]
    na = s.get("none_answer")
    if na is not None and not (na["gold_none"] or na["pred_none"]):
        lines.append("  none-answers: none among the correct options or the chosen ones")
    elif na is not None:
        lines.append(
            f"  none-answers: gold {na['gold_none']}, predicted {na['pred_none']}, both {na['true_positive']}; "
            f"precision {_pct(na['precision'])} %, recall {_pct(na['recall'])} %, F1 {_pct(na['f1'])} %"
        )
    fg = s.get("fusion_gain")
    if fg is not None:
        lines.append(
            f"  fusion gain (condition = {fg['condition']}): {fg['gains']} of {fg['compared']} groups = "
            f"{_pct(fg['fraction'])} %, mean margin {_num(fg['mean_margin'])}; {fg['groups']} groups, "
            f"{fg['only_uni']} with only uni-modal and {fg['only_multi']} with only multi-modal conditions not compared"
        )
    d = s["decay"]
    lines.append(f"  response length bins ({d['binning']}):")
    lines.append(
        format_table(
            ["tokens", "samples", "mean len", f"{'acc' if task == 'qa' else 'score'} %"],
            [
                [f"[{b['lo']:g}, {b['hi']:g}]", b["samples"], _num(b["mean_length"], 1), _pct(b["accuracy"])]
                for b in d["bins"]
            ],
            indent="    ",
        )
    )
    if d["below"] or d["above"]:
        lines.append(f"    outside the edges: {d['below']} below, {d['above']} above")
    lines.append(
        f"    r(length, {'correct' if task == 'qa' else 'score'}) = {_num(d['r_length']) if d['r_length'] is not None else d['r_length_note']}; "
        f"r(bin centre, bin {'acc' if task == 'qa' else 'score'}) = {_num(d['r_bins']) if d['r_bins'] is not None else d['r_bins_note']}"
    )
    return lines


def _format_published(p: Mapping[str, Any]) -> list[str]:
    tags = [t for t in TAGS if any(t in r["per_tag"] for r in p["rows"])]
    header = ["row", *tags, "Avg", "U-B", "U-T", "B-T", "Gap"]
    rows = []
    for r in p["rows"]:
        g = r["modality_gap"]
        rows.append(
            [r["name"], *[_pct(r["per_tag"][t]["accuracy"]) if t in r["per_tag"] else "-" for t in tags]]
            + [_pct(r["pooled"]), _pct(g["u_b"]), _pct(g["u_t"]), _pct(g["b_t"]), _pct(g["gap"])]
        )
        if r["reported"]:
            rep = r["reported"]
            rows.append(["  reported", *[""] * len(tags), *[_pct(rep.get(k)) for k in REPORTED_KEYS]])
    samples: dict[str, int] = {}
    for r in p["rows"]:
        if r["from_table"]:
            for t, v in r["per_tag"].items():
                samples.setdefault(t, v["samples"])
    lines = [f"published table {p['source']} (recomputed by pooling; %):"]
    lines.append(format_table(header, [["# samples", *[samples.get(t, "-") for t in tags], "", "", "", "", ""], *rows]))
    if p["ignored_columns"]:
        lines.append(f"  columns not used: {', '.join(p['ignored_columns'])}")
    return lines


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text tables."""
    lines: list[str] = []
    if report["records"]:
        lines.append(
            f"{report['results'] or 'results'}: {report['records']} records; policies: {', '.join(report['policies'])}"
        )
        lines.append(
            format_table(
                ["benchmark", "data_source", "task", "version", "rule", "queries", "samples", "pass@1 %"],
                [
                    [
                        b["benchmark"] or b["registry_name"] or "-",
                        b["data_source"],
                        b["task"],
                        (b["version"] or "-")
                        + (" (registry default)" if b["version_source"] == "registry default" else ""),
                        b["scoring_rule"] or (f"{b['rule']} (not recorded)" if b["rule"] else "-"),
                        b["queries"],
                        b["samples"],
                        _pct(b["pass_at_1"]),
                    ]
                    for b in report["benchmarks"]
                ],
            )
        )
        for task in TASK_NAMES:
            if report["tasks"][task] is not None:
                lines += ["", *_format_task(task, report["tasks"][task])]
    if report["published"] is not None:
        lines += ["", *_format_published(report["published"])]
    if report["warnings"]:
        lines += ["", "warnings:", *[f"  {w}" for w in report["warnings"]]]
    return "\n".join(lines).lstrip("\n")


# ---------------------------------------------------------------------------------------------------------------
# command line


def _edges(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bin-edges {text!r}: expected comma-separated numbers") from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``report`` options; sets :func:`run` as the handler."""
    parser.add_argument("results", nargs="?", default=None, metavar="RESULTS.jsonl", help="evaluation result records")
    parser.add_argument("--json", action="store_true", help="print one JSON object (schema in docs/evaluation.md)")
    parser.add_argument("--plots", default=None, metavar="DIR", help="write the heatmap and decay PNGs to DIR")
    parser.add_argument("--bins", type=int, default=5, help="equal-count response-length bins (default 5)")
    parser.add_argument("--bin-edges", type=_edges, default=None, metavar="E0,E1,...", help="fixed length bins")
    parser.add_argument("--table", default=None, metavar="PUBLISHED", help="published per-tag table (CSV or JSON)")
    parser.add_argument("--fusion-condition", choices=M.FUSION_CONDITIONS, default="available")
    parser.add_argument("--benchmark", default=None, help="only this benchmark's records")
    parser.add_argument("--policy", default=None, help="only this policy's records")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the report (text or JSON), write plots; exit 1 on a bad input file."""
    if args.results is None and args.table is None:
        print("report: give RESULTS.jsonl, --table PUBLISHED, or both", file=sys.stderr)
        return 2
    if args.bins < 1:
        print(f"report: --bins must be at least 1, got {args.bins}", file=sys.stderr)
        return 2
    options = ReportOptions(args.bins, args.bin_edges, args.fusion_condition, args.benchmark, args.policy)
    try:
        records = read_results(args.results) if args.results is not None else None
        table = read_published_table(args.table) if args.table is not None else None
        report = build_report(records, options, args.results, table)
    except (OSError, ValueError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    if args.plots:
        from verl_modality.evaluation.plots import PlotsUnavailable, write_plots

        try:
            report["plots"] = [str(p) for p in write_plots(report, args.plots)]
        except PlotsUnavailable as exc:
            print(f"report: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
