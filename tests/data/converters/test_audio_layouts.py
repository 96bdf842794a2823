"""MMSU, MMAR and AudioMCQ: small fixtures in their public layouts."""

from __future__ import annotations

import pytest

from verl_modality.data import schema, validate
from verl_modality.data.converters import convert
from verl_modality.data.converters.records import ConvertError


def _mmsu(i, **kw):
    rec = {
        "id": f"mmsu-{i}",
        "audio_path": f"audio/mmsu-{i}.wav",
        "question": f"What emotion does speaker {i} show?",
        "choice_a": "anger",
        "choice_b": "joy",
        "choice_c": "sadness",
        "choice_d": "fear",
        "answer_gt": "sadness",
        "task_name": "emotion",
        "category": "perception",
        "sub-category": "paralinguistics",
        "sub-sub-category": "emotion",
    }
    return {**rec, **kw}


def test_mmsu_jsonl(tmp_path, media):
    source = media.json(tmp_path / "mmsu.jsonl", [_mmsu(0), _mmsu(1, answer_gt="Joy")], jsonl=True)
    for i in range(2):
        media.wav(tmp_path / f"audio/mmsu-{i}.wav")
    out = tmp_path / "o" / "mmsu.parquet"
    report = convert("mmsu", source, out, progress=False)
    assert report.rows_written == 2 and validate.validate_file(out) == 2
    a, b = schema.read_rows(out)
    assert a["choices"] == ["anger", "joy", "sadness", "fear"] and a["answer"] == "C" and b["answer"] == "B"
    assert a["modality_tag"] == "A" and a["extra_info"]["sub_sub_category"] == "emotion"
    assert a["id"] == "mmsu-0" and a["extra_info"]["task_name"] == "emotion"


def test_mmsu_missing_in_both_modes_and_bad_answer(tmp_path, media):
    recs = [_mmsu(0), _mmsu(1), _mmsu(2), _mmsu(3, answer_gt="boredom")]
    source = media.json(tmp_path / "mmsu.json", recs)
    media.wav(tmp_path / "audio/mmsu-0.wav")
    media.wav(tmp_path / "audio/mmsu-3.wav")
    with pytest.raises(ConvertError) as info:
        convert("mmsu", source, tmp_path / "x.parquet", progress=False)
    assert [(b.row, b.id, b.path, b.reason) for b in info.value.bad_rows] == [
        (1, "mmsu-1", "audio/mmsu-1.wav", "missing media"),
        (2, "mmsu-2", "audio/mmsu-2.wav", "missing media"),
    ]
    report = convert("mmsu", source, tmp_path / "x.parquet", on_missing="skip", progress=False)
    assert report.rows_written == 1
    assert report.skipped == {"missing media": 2, "invalid: answer not among choices": 1}


def test_mmar_modality_to_extra_info(tmp_path, media):
    recs = [
        {
            "id": f"mmar-{i}",
            "audio_path": f"./audio/mmar-{i}.wav",
            "question": "How many speakers are there?",
            "choices": ["one", "two", "three"],
            "answer": "two",
            "modality": modality,
            "category": "Perception Layer",
            "sub-category": "Counting",
            "language": "en",
            "source": "youtube",
            "url": "https://example.org",
            "timestamp": None,
        }
        for i, modality in enumerate(["speech", "mix-sound-speech"])
    ]
    source = media.json(tmp_path / "MMAR-meta.json", recs)
    media.wav(tmp_path / "audio/mmar-0.wav")
    media.junk(tmp_path / "audio/mmar-1.wav")
    with pytest.raises(ConvertError, match="unreadable media"):
        convert("mmar", source, tmp_path / "m.parquet", progress=False)
    report = convert("mmar", source, tmp_path / "m.parquet", on_missing="skip", progress=False)
    assert report.skipped == {"unreadable media": 1}
    (row,) = schema.read_rows(tmp_path / "m.parquet")
    assert row["modality_tag"] == "A" and row["answer"] == "B" and row["extra_info"]["modality"] == "speech"
    assert row["extra_info"]["category"] == "Perception Layer" and "timestamp" not in row["extra_info"]


def test_audiomcq_parquet(tmp_path, media):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [
        {
            "source_dataset": "Clotho",
            "id": f"amcq-{i}",
            "audio_path": f"clotho/{i}.wav",
            "question": "What is the main sound?",
            "choices": ["rain", "birds", "traffic", "a bell"],
            "answer": answer,
            "audio_contribution": ac,
            "question_type": "sound",
        }
        for i, (answer, ac) in enumerate([("birds", "weak"), ("D", "strong")])
    ]
    source = tmp_path / "audiomcq.parquet"
    pq.write_table(pa.Table.from_pylist(recs), source)
    for i in range(2):
        media.wav(tmp_path / f"clotho/{i}.wav")
    report = convert("audiomcq", source, tmp_path / "a.parquet", progress=False)
    assert report.rows_written == 2
    a, b = schema.read_rows(tmp_path / "a.parquet")
    assert (a["answer"], b["answer"]) == ("B", "D")
    assert a["extra_info"]["audio_contribution"] == "weak" and a["extra_info"]["source_dataset"] == "Clotho"
    assert b["extra_info"]["answer_text"] == "a bell" and a["extra_info"]["split"] == "train"
