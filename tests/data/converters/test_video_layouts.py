"""Daily-Omni and the three MAPLE-bench layouts (assumed field names, see maple_bench.py), plus the CLI."""

from __future__ import annotations

import pytest

from verl_modality.data import prompts, schema, validate
from verl_modality.data.converters import convert
from verl_modality.data.converters.records import ConvertError


def _daily(video_id, answer="B", qtype="AV Event Alignment"):
    return {
        "video_id": video_id,
        "Question": "What sound is heard when the door opens?",
        "Choice": ["A. a bell", "B. a creak", "C. music", "D. silence"],
        "Answer": answer,
        "Type": qtype,
        "video_category": "home",
        "video_duration": "30s",
    }


def test_daily_omni(tmp_path, media):
    recs = [_daily("v1"), _daily("v1", "A", "Reasoning"), _daily("v2", "C"), _daily("v3")]
    source = media.json(tmp_path / "qa.json", recs)
    media.mp4(tmp_path / "v1/v1_video.mp4")
    media.wav(tmp_path / "v1/v1_audio.wav")
    media.mp4(tmp_path / "v2/v2_video.mp4")  # no sibling wav: V only
    with pytest.raises(ConvertError) as info:  # v3 has no video at all
        convert("daily-omni", source, tmp_path / "d.parquet", progress=False)
    assert [(b.row, b.id, b.path) for b in info.value.bad_rows] == [(3, "v3-0", "v3/v3_video.mp4")]
    report = convert("daily-omni", source, tmp_path / "d.parquet", on_missing="skip", progress=False)
    assert report.rows_written == 3 and report.skipped == {"missing media": 1}
    assert report.per_tag == {"VA": 3} and report.per_stratum == {"exact": 2, "deficit": 1}
    assert report.notes == {"no separate audio wav (A not available)": 2}  # v2 and (unwritten) v3
    assert validate.validate_file(tmp_path / "d.parquet") == 3
    a, b, c = schema.read_rows(tmp_path / "d.parquet")
    assert [r["id"] for r in (a, b, c)] == ["v1-0", "v1-1", "v2-0"]
    assert a["choices"] == ["a bell", "a creak", "music", "silence"] and a["answer"] == "B" and b["answer"] == "A"
    assert (a["media_streams"], a["available"], a["stratum"]) == ("VA", "VA", "exact")
    assert a["videos"][0]["video"].endswith("v1/v1_video.mp4") and a["audios"][0]["audio"].endswith("v1_audio.wav")
    assert (c["media_streams"], c["available"], c["stratum"], c["audios"]) == ("V", "V", "deficit", [])
    assert b["extra_info"]["type"] == "Reasoning" and c["extra_info"]["answer_text"] == "music"


def _maple(i, tag, **kw):
    rec = {
        "id": f"q{i}",
        "video_id": f"vast{i}",
        "modality_tag": tag,
        "question": "Who is speaking?",
        "options": ["A. a man", "B. a woman", "C. a child", "D. nobody"],
        "answer": "B",
        "subtitle": "Hello there, I am the narrator.",
    }
    return {**rec, **kw}


@pytest.fixture()
def maple_media(tmp_path, media):
    for i in range(3):
        media.mp4(tmp_path / f"vast{i}/vast{i}_video.mp4")
    media.wav(tmp_path / "vast0.wav")  # flat layout also accepted
    return tmp_path


def test_maple_qa_exact(maple_media, media):
    root = maple_media
    recs = [_maple(0, "VA"), _maple(1, ["V", "S"]), _maple(2, "audio+subtitle"), _maple(3, "S", subtitle="")]
    source = media.json(root / "MAPLE_QA_exact.json", recs)
    with pytest.raises(ConvertError) as info:
        convert("maple-qa-exact", source, root / "e.parquet", progress=False)
    assert [(b.row, b.path) for b in info.value.bad_rows] == [(2, "vast2/vast2_audio.wav")]
    report = convert("maple-qa-exact", source, root / "e.parquet", on_missing="skip", progress=False)
    assert report.skipped == {"missing media": 1, "invalid: no subtitle": 1}
    a, b = schema.read_rows(root / "e.parquet")
    assert (a["modality_tag"], a["available"], a["media_streams"], a["stratum"]) == ("VA", "VA", "VAS", "exact")
    assert (
        a["audios"][0]["audio"].endswith("vast0.wav") and a["subtitle"] and "Subtitles" not in a["prompt"][0]["content"]
    )
    assert (b["modality_tag"], b["available"], b["media_streams"]) == ("VS", "VS", "VS")
    assert "Hello there" in b["prompt"][0]["content"] and b["choices"][1] == "a woman" and b["answer"] == "B"
    assert b["extra_info"]["video_id"] == "vast1"


def test_maple_qa_all_strata(maple_media, media):
    root = maple_media
    recs = [
        _maple(0, "VA", available="VA", stratum="exact"),
        _maple(0, "VA", available="VAS", stratum="superset"),
        _maple(
            0,
            "VA",
            available="V",
            answer="Cannot determine the answer from the given information.",
            options=["a man", "a woman", "Cannot determine the answer from the given information.", "nobody"],
        ),
        _maple(1, "S", available="VS", stratum="deficit"),  # the given stratum disagrees: VS contains S
    ]
    source = media.json(root / "all.jsonl", recs, jsonl=True)
    report = convert("maple-qa-all", source, root / "all.parquet", progress=False)
    assert report.skipped == {"invalid: stratum disagrees": 1}
    assert report.per_stratum == {"exact": 1, "superset": 1, "deficit": 1}
    rows = schema.read_rows(root / "all.parquet")
    assert [r["id"] for r in rows] == ["q0-VA", "q0-VAS", "q0-V"]
    assert rows[2]["answer"] == "C" and rows[2]["audios"] == [] and rows[2]["media_streams"] == "VAS"
    assert validate.validate_file(root / "all.parquet") == 3


def test_maple_caption(maple_media, media):
    root = maple_media
    recs = [
        {"id": "c0", "video_id": "vast0", "rmt": "VA", "caption": "A man talks while a dog barks."},
        {"id": "c1", "video_id": "vast1", "rmt": "V", "caption": "A red car drives by.", "prompt": "Describe it."},
    ]
    source = media.json(root / "MAPLE_caption.json", recs)
    report = convert("maple-caption", source, root / "cap.parquet", progress=False)
    assert report.per_task == {"caption": 2} and "per task" in report.format()
    assert validate.validate_file(root / "cap.parquet") == 2
    a, b = schema.read_rows(root / "cap.parquet")
    assert a["task"] == "caption" and a["choices"] == [] and a["answer"] == "A man talks while a dog barks."
    assert a["reward_model"] == {"style": "judge", "ground_truth": a["answer"]}
    assert a["question"] == prompts.CAPTION_INSTRUCTION and "Options" not in a["prompt"][0]["content"]
    assert b["prompt"][0]["content"].endswith("Describe it.") and b["available"] == "V"


def test_cli_convert(tmp_path, media, capsys):
    from verl_modality.cli import main

    assert main(["convert", "--list"]) == 0
    assert "maple-qa-all" in capsys.readouterr().out
    assert main(["convert", "no-such-layout", "a", "b"]) == 2
    assert "daily-omni" in capsys.readouterr().err
    source = media.json(tmp_path / "src" / "qa.json", [_daily("v1")])
    media.mp4(tmp_path / "media/v1/v1_video.mp4")
    args = ["convert", "daily-omni", str(source), str(tmp_path / "o.parquet"), "--media-root", str(tmp_path / "media")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rows written  1" in out and "deficit 1" in out
    assert main([*args[:2], str(tmp_path / "qa-missing.json"), args[3]]) == 1
    assert "source file not found" in capsys.readouterr().err
    assert main([*args[:4], "--on-missing", "skip"]) == 1  # media root = source dir: nothing found, nothing written
    assert "missing media: 1" in capsys.readouterr().out
