"""Learnable demo set (balanced question families) and the warm start's SFT records."""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq
import pytest

from verl_modality import vocabulary
from verl_modality.data import schema
from verl_modality.data.demo_sft import answer_text, sft_record, write_sft_file
from verl_modality.data.modality_view import ModalityView
from verl_modality.data.synthetic import make_demo_data, question_family
from verl_modality.vocabulary import TAGS


@pytest.fixture(scope="module")
def balanced(tmp_path_factory):
    out = tmp_path_factory.mktemp("balanced")
    summary = make_demo_data(out, seed=1, n_train=140, n_test=14, families="balanced", progress=False)
    return out, summary


def test_balanced_families_ask_pitch_in_every_audio_tag(balanced, tmp_path):
    out, summary = balanced
    rows = schema.read_rows(out / "train.parquet")
    pitch_tags = {r["modality_tag"] for r in rows if "pitch" in r["question"]}
    assert pitch_tags == {t for t in TAGS if "A" in t}
    counts = Counter(question_family(r["modality_tag"], s, r["question"]) for r in rows for s in r["modality_tag"])
    assert summary["splits"]["train"]["questions_per_family"] == dict(counts)
    assert counts["colour"] == counts["animal"] == 80 and counts["pitch"] + counts["count"] == 80
    assert min(counts["pitch"], counts["count"]) >= 25  # about half of the 80 audio questions each
    classic = make_demo_data(tmp_path / "c", seed=1, n_train=140, n_test=0, progress=False)
    classic_rows = schema.read_rows(tmp_path / "c" / "train.parquet")
    assert {r["modality_tag"] for r in classic_rows if "pitch" in r["question"]} == {"A"}
    assert classic["families"] == "classic" and summary["families"] == "balanced"
    for row in rows:  # bi/tri pitch questions: every option names a pitch, the truth is among them
        if "pitch" in row["question"] and len(row["modality_tag"]) > 1:
            assert all("pitched" in c for c in row["choices"])
    with pytest.raises(ValueError, match="families must be one of"):
        make_demo_data(tmp_path / "x", n_train=7, n_test=0, families="wide", progress=False)


def test_sft_record_follows_the_view_and_answers_with_the_option_text(balanced):
    out, _ = balanced
    rows = schema.read_rows(out / "train.parquet")
    row = next(r for r in rows if r["modality_tag"] == "VA")
    exact = sft_record(row, ModalityView(policy="exact"))
    full = sft_record(row, ModalityView(policy="full"))
    gold = row["choices"][vocabulary.LETTERS.index(row["answer"])]
    for rec in (exact, full):
        assert rec["messages"][-1] == {"role": "assistant", "content": f"[{gold}]"}
        assert rec["messages"][0]["role"] == "user" and rec["answer"] == row["answer"]
    assert "<video>" in exact["messages"][0]["content"] and "<audio>" in exact["messages"][0]["content"]
    assert row["subtitle"] not in exact["messages"][0]["content"]  # exact: S is not shown for a VA row
    assert row["subtitle"] in full["messages"][0]["content"]
    assert [v["video"] for v in exact["videos"]] == [v["video"] for v in row["videos"]]
    from verl_modality.rewards.choice import score_row

    assert score_row(row, answer_text(row))["acc"] == 1.0  # the reward credits the taught reply


def test_write_sft_file_one_record_per_row_and_policy(balanced, tmp_path):
    out, _ = balanced
    rows = schema.read_rows(out / "train.parquet")[:21]
    path = write_sft_file(rows, tmp_path / "sft.parquet", ("exact", "full"))
    table = pq.read_table(path).to_pylist()
    assert len(table) == 42 and [r["id"] for r in table] == [r["id"] for r in rows] * 2
    bad = {**rows[0], "answer": "E"}
    with pytest.raises(ValueError, match="answer 'E' is not one of its 4 option letters"):
        answer_text(bad)
    with pytest.raises(ValueError, match="takes QA rows"):
        sft_record({**rows[0], "task": "caption"}, ModalityView())
