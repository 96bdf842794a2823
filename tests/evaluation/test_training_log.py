import json

import pytest

from verl_modality.evaluation.training_log import format_table, read_metrics, summarize


def _write(path, records):
    path.write_text("\n".join(json.dumps({"step": s, "data": d}) for s, d in records) + "\n")


def test_summary_aggregates_steps_by_response_count(tmp_path):
    log = tmp_path / "m.jsonl"
    _write(
        log,
        [
            (0, {"val-core/tag/V/acc": 0.25, "val-core/tag/pooled/acc": 0.3}),
            (
                1,
                {
                    "mapo/V/count": 8,
                    "mapo/V/reward_mean": 0.5,
                    "mapo/V/weight": 0.4,
                    "mapo/A/count": 4,
                    "mapo/A/reward_mean": 0.0,
                    "actor/pg_loss": 1.0,
                },
            ),
            (
                2,
                {
                    "mapo/V/count": 24,
                    "mapo/V/reward_mean": 0.25,
                    "mapo/V/weight": 0.7,
                    "val-core/tag/V/acc": 0.5,
                    "val-core/tag/pooled/acc": 0.4,
                },
            ),
        ],
    )
    summary = summarize(read_metrics(log))
    assert summary["V"]["count"] == 32
    assert summary["V"]["reward_mean"] == pytest.approx((8 * 0.5 + 24 * 0.25) / 32)
    assert summary["V"]["weight"] == 0.7  # last step's value
    assert (summary["V"]["val_first"], summary["V"]["val_last"]) == (0.25, 0.5)
    assert summary["A"] == {"count": 4, "reward_mean": 0.0}
    assert summary["pooled"] == {"val_first": 0.3, "val_last": 0.4}
    table = format_table(summary).splitlines()
    assert [line.split()[0] for line in table[1:]] == ["V", "A", "pooled"]  # canonical tag order, then extras
    assert table[1].split()[1:3] == ["32", "0.312"]


def test_bad_line_names_file_and_line(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1, "data": {}}\nnot json\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2"):
        read_metrics(log)
