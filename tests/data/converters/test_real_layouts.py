"""The benchmarks' files in the forms they are published: MMSU's leading-slash paths, Hugging Face parquet / arrow
exports with embedded audio, JSON lines under a .json name; every record accounted for."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_modality import vocabulary
from verl_modality.data import schema, validate
from verl_modality.data.converters import convert
from verl_modality.data.converters.base import Context
from verl_modality.data.converters.records import ConvertError
from verl_modality.data.converters.report import UNKNOWN, ConvertReport

UUIDS = ["0b9a4c1e", "5f2d7e90", "c3a81b47", "9e6f0d12"]


def _mmsu(i: int, **kw) -> dict:
    """An MMSU record with the published field names (``mmsu.jsonl`` / ``ddwang2000/MMSU``)."""
    rec = {
        "id": f"emotion_recognition_{UUIDS[i]}",
        "audio_path": f"/audio/emotion_recognition_{UUIDS[i]}.wav",
        "question": "What emotion does the speaker convey?",
        "choice_a": "anger",
        "choice_b": "joy",
        "choice_c": "sadness",
        "choice_d": "fear",
        "answer_gt": "joy",
        "task_name": "emotion_recognition",
        "category": "Perception" if i % 2 == 0 else "Reasoning",
        "sub-category": "Paralinguistics",
        "sub-sub-category": "Speaking Style",
        "linguistics_sub_discipline": "paralinguistics",
    }
    return {**rec, **kw}


def _wav_bytes(tmp_path: Path, media, name: str, salt: int = 0) -> bytes:
    """The bytes of a tiny wav file; a non-zero ``salt`` changes its last samples (so contents differ)."""
    data = media.wav(tmp_path / "wav-src" / name).read_bytes()
    return data if not salt else data[:-4] + salt.to_bytes(4, "little")


def _audio_of(out: Path, row: dict) -> Path:
    return Path(os.path.normpath(out.parent / row["audios"][0]["audio"]))


def test_mmsu_leading_slash_paths_resolve_under_media_root(tmp_path, media):
    root = tmp_path / "MMSU"
    absolute = media.wav(tmp_path / "elsewhere" / "clip.wav")  # an absolute path that exists stays as it is
    recs = [_mmsu(0), _mmsu(1), _mmsu(2), _mmsu(3, audio_path=str(absolute))]
    source = media.json(root / "question" / "mmsu.jsonl", recs, jsonl=True)
    for i in (0, 1):
        media.wav(root / f"audio/emotion_recognition_{UUIDS[i]}.wav")

    with pytest.raises(ConvertError) as info:
        convert("mmsu", source, tmp_path / "o" / "mmsu.parquet", media_root=root, progress=False)
    (bad,) = info.value.bad_rows
    assert (bad.row, bad.path, bad.reason) == (2, f"/audio/emotion_recognition_{UUIDS[2]}.wav", "missing media")
    assert str(root / "audio" / f"emotion_recognition_{UUIDS[2]}.wav") in bad.detail  # both places tried are named
    assert f"/audio/emotion_recognition_{UUIDS[2]}.wav or " in bad.detail

    out = tmp_path / "o" / "mmsu.parquet"
    report = convert("mmsu", source, out, media_root=root, on_missing="skip", progress=False)
    assert (report.rows_read, report.rows_written, dict(report.skipped)) == (4, 3, {"missing media": 1})
    assert validate.validate_file(out) == 3
    rows = schema.read_rows(out)
    assert [_audio_of(out, r) for r in rows] == [
        root / f"audio/emotion_recognition_{UUIDS[0]}.wav",
        root / f"audio/emotion_recognition_{UUIDS[1]}.wav",
        absolute,
    ]
    assert rows[0]["answer"] == "B" and rows[0]["extra_info"]["linguistics_sub_discipline"] == "paralinguistics"
    # per category: Perception has rows 0 and 2 (2 missing), Reasoning rows 1 and 3
    assert report.category_field == "category"
    assert report.as_dict()["per_category"] == {
        "Perception": {"read": 2, "written": 1, "skipped": 1},
        "Reasoning": {"read": 2, "written": 2, "skipped": 0},
    }
    assert "per source 'category' (written / skipped / read)" in report.format()


def test_context_resolution_rules(tmp_path, media):
    ctx = Context(tmp_path / "root")
    media.wav(tmp_path / "root" / "audio" / "a.wav")
    outside = media.wav(tmp_path / "abs.wav")
    assert ctx.resolve("audio/a.wav") == tmp_path / "root/audio/a.wav"
    assert ctx.resolve("/audio/a.wav") == tmp_path / "root/audio/a.wav"  # leading slash, missing as given
    assert ctx.resolve(str(outside)) == outside  # an absolute path that exists stays
    missing = tmp_path / "nowhere" / "b.wav"
    assert ctx.candidates(str(missing)) == [missing, tmp_path / "root" / missing.relative_to("/")]
    assert not ctx.exists(str(missing))
    # a schema row's path keeps schema.resolve_path's meaning (absolute as given): the loaders read it that way
    assert schema.resolve_path("/audio/a.wav", tmp_path / "root") == Path("/audio/a.wav")


def test_mmsu_hf_parquet_with_embedded_audio(tmp_path, media):
    """``ddwang2000/MMSU`` as exported by Hugging Face: an ``audio`` struct column of bytes and file name."""
    same = _wav_bytes(tmp_path, media, "same.wav")
    other = _wav_bytes(tmp_path, media, "other.wav", salt=880)
    audio = [
        {"bytes": same, "path": "emotion_recognition_x.wav"},
        {"bytes": other, "path": "emotion_recognition_x.wav"},  # same name, other content
        {"bytes": same, "path": "emotion_recognition_x.wav"},  # same content: one file
        {"bytes": None, "path": "clips/only_path.wav"},  # no bytes: the path, under the media root
    ]
    recs = [{**{k: v for k, v in _mmsu(i).items() if k != "audio_path"}, "audio": a} for i, a in enumerate(audio)]
    hf = tmp_path / "MMSU" / "data"
    hf.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(recs), hf / "train-00000-of-00001.parquet")
    media.wav(tmp_path / "MMSU" / "data" / "clips" / "only_path.wav")

    out = tmp_path / "out" / "mmsu.parquet"
    report = convert("mmsu", hf / "train-00000-of-00001.parquet", out, progress=False)
    assert report.rows_written == 4 and report.media_extracted == 2
    assert "media files extracted from the source: 2" in report.format()
    assert validate.validate_file(out) == 4
    files = [_audio_of(out, r) for r in schema.read_rows(out)]
    folder = out.parent / "media" / "mmsu"
    assert files[0] == files[2] and files[0] != files[1] and {files[0].parent, files[1].parent} == {folder}
    assert files[0].name.startswith("emotion_recognition_x-") and files[0].suffix == ".wav"
    assert files[0].read_bytes() == same and files[1].read_bytes() == other
    assert files[3] == tmp_path / "MMSU/data/clips/only_path.wav"  # a struct without bytes gives its path
    assert sorted(p.name for p in folder.iterdir()) == sorted({files[0].name, files[1].name})

    # rerun: the extracted files are reused, nothing new appears
    report = convert("mmsu", hf / "train-00000-of-00001.parquet", out, progress=False)
    assert report.media_extracted == 2 and len(list(folder.iterdir())) == 2


def test_embedded_audio_wins_over_a_missing_path(tmp_path, media):
    data = _wav_bytes(tmp_path, media, "a.wav")
    rec = _mmsu(0, audio={"bytes": data, "path": "a.wav"})  # audio_path /audio/... exists nowhere
    source = tmp_path / "mmsu.parquet"
    pq.write_table(pa.Table.from_pylist([rec]), source)
    report = convert("mmsu", source, tmp_path / "o.parquet", progress=False)
    (row,) = schema.read_rows(tmp_path / "o.parquet")
    assert report.rows_written == 1 and row["audios"][0]["audio"].startswith("media/mmsu/a-")


def test_mmsu_save_to_disk_folder_of_arrow_shards(tmp_path, media):
    """``datasets.save_to_disk``: a folder of Arrow IPC stream shards (plus JSON metadata the reader ignores)."""
    data = [_wav_bytes(tmp_path, media, f"{i}.wav", salt=100 + i) for i in range(4)]
    folder = tmp_path / "mmsu_disk"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    for shard, idx in enumerate(((0, 1), (2, 3))):
        recs = [_mmsu(i, audio={"bytes": data[i], "path": f"{i}.wav"}) for i in idx]
        table = pa.Table.from_pylist(recs)
        with pa.ipc.new_stream(folder / f"data-0000{shard}-of-00002.arrow", table.schema) as writer:
            writer.write_table(table)
    out = tmp_path / "o" / "m.parquet"
    report = convert("mmsu", folder, out, limit=3, progress=False)
    assert (report.rows_read, report.rows_written, report.media_extracted) == (3, 3, 3)
    assert [r["id"] for r in schema.read_rows(out)] == [_mmsu(i)["id"] for i in range(3)]
    assert validate.validate_file(out) == 3
    with pytest.raises(ConvertError, match="holds no .parquet or .arrow files"):
        convert("mmsu", tmp_path / "o" / "media", out, progress=False)


def test_mmau_hf_parquet_choices_string_and_embedded_audio(tmp_path, mmau_fixture, media):
    """``lmms-lab/mmau`` test_mini: no ``audio_id``; ``audio`` struct column; ``choices`` one string."""
    items = json.loads(mmau_fixture.read_text())[:3]
    recs = []
    for n, item in enumerate(items):
        rec = {k: v for k, v in item.items() if k != "audio_id"}
        rec["choices"] = str(item["choices"]) if n != 1 else json.dumps(item["choices"])  # repr or JSON text
        rec["audio"] = {"bytes": _wav_bytes(tmp_path, media, f"{n}.wav", salt=300 + n), "path": f"{item['id']}.wav"}
        recs.append(rec)
    source = tmp_path / "test_mini-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(recs), source)
    out = tmp_path / "mmau.parquet"
    report = convert("mmau", source, out, progress=False)
    assert report.rows_written == 3 and validate.validate_file(out) == 3
    for row, item in zip(schema.read_rows(out), items, strict=True):
        assert row["choices"] == item["choices"]
        assert row["choices"][vocabulary.LETTERS.index(row["answer"])] == item["answer"]
        assert Path(row["audios"][0]["audio"]).name.startswith(item["id"] + "-")
    assert sum(report.read_per_category.values()) == 3 and set(report.read_per_category) <= {"sound", "music", "speech"}


def test_mmar_raw_bytes_arrow_file_and_json_lines_under_json_name(tmp_path, media):
    rec = {
        "id": "mmar-0",
        "audio_path": "./audio/mmar-0.wav",
        "question": "How many speakers are there?",
        "choices": ["one", "two"],
        "answer": "two",
        "modality": "speech",
        "category": "Perception Layer",
        "sub-category": "Counting",
    }
    # an arrow file (IPC file format) whose audio column holds raw bytes, one of them empty
    table = pa.Table.from_pylist(
        [{**rec, "audio": _wav_bytes(tmp_path, media, "m.wav")}, {**rec, "id": "mmar-1", "audio": b""}]
    )
    with pa.ipc.new_file(tmp_path / "mmar.arrow", table.schema) as writer:
        writer.write_table(table)
    report = convert("mmar", tmp_path / "mmar.arrow", tmp_path / "o.parquet", on_missing="skip", progress=False)
    (row,) = schema.read_rows(tmp_path / "o.parquet")
    assert row["id"] == "mmar-0" and row["audios"][0]["audio"].startswith("media/mmar/") and row["answer"] == "B"
    assert row["audios"][0]["audio"].endswith(".wav")  # no file name given: the suffix comes from the bytes
    assert report.skipped == {"missing media": 1}  # empty bytes: back to audio_path, which does not exist

    # datasets' to_json writes one object per line under a .json name
    (tmp_path / "audio").mkdir()
    media.wav(tmp_path / "audio/mmar-0.wav")
    source = tmp_path / "mmar_export.json"
    source.write_text("\n".join(json.dumps({**rec, "id": f"mmar-{i}"}) for i in range(2)) + "\n")
    report = convert("mmar", source, tmp_path / "j.parquet", progress=False)
    assert report.rows_written == 2 and report.per_category == {"speech": 2}


def test_every_record_is_accounted_for(tmp_path, media):
    recs = [
        _mmsu(0),
        _mmsu(1, answer_gt="boredom"),  # invalid: answer not among choices
        _mmsu(2),  # missing media
        _mmsu(3, id=_mmsu(0)["id"]),  # duplicate id
        _mmsu(0, id="no-question", question=None, category=None),  # invalid: missing field, no category
    ]
    source = media.json(tmp_path / "mmsu.json", recs)
    for i in (0, 3):
        media.wav(tmp_path / f"audio/emotion_recognition_{UUIDS[i]}.wav")
    report = convert("mmsu", source, tmp_path / "o.parquet", on_missing="skip", progress=False)
    assert report.rows_read == 5 and report.rows_written == 1 and report.rows_skipped == 4
    assert report.skipped == {
        "invalid: answer not among choices": 1,
        "missing media": 1,
        "invalid: duplicate id": 1,
        "invalid: missing field": 1,
    }
    assert report.per_tag + report.skipped_per_tag == Counter({"A": 5})  # the layout's tag is fixed
    assert report.per_task + report.skipped_per_task == Counter({"qa": 5})
    assert report.read_per_category == {"Perception": 2, "Reasoning": 2, "(none)": 1}
    assert report.skipped_per_category == {"Perception": 1, "Reasoning": 2, "(none)": 1}
    report.check()

    report.per_category["Perception"] += 1  # a count that no longer adds up is refused
    with pytest.raises(ConvertError, match="Perception.*2 written \\+ 1 skipped != 2"):
        report.check()
    with pytest.raises(ConvertError, match="3 written \\+ 0 skipped != 2 read"):
        ConvertReport("x", "s", rows_read=2, rows_written=3).check()


def test_unmapped_records_of_a_per_item_tag_layout_count_as_unknown(tmp_path, media):
    recs = [{"video_id": "v1", "question": "Q?", "choices": ["a", "b"], "answer": "A", "modality_tag": "nonsense"}]
    source = media.json(tmp_path / "maple.json", recs)
    report = convert("maple-qa-exact", source, tmp_path / "o.parquet", on_missing="skip", progress=False)
    assert report.skipped == {"invalid: bad modality tag": 1}
    assert report.skipped_per_tag == {UNKNOWN: 1} and report.skipped_per_task == {"qa": 1}


@pytest.mark.parametrize("limit", [-1, 0, 2.5, True])
def test_bad_limit_is_one_error_naming_the_option(tmp_path, media, limit):
    source = media.json(tmp_path / "mmsu.json", [_mmsu(0)])
    with pytest.raises(ValueError, match="--limit") as info:
        convert("mmsu", source, tmp_path / "o.parquet", limit=limit, progress=False)
    assert "\n" not in str(info.value)


def test_cli_bad_limit_and_media_root(tmp_path, media, capsys):
    from verl_modality.cli import main

    source = media.json(tmp_path / "mmsu.json", [_mmsu(0)])
    try:
        code = main(["convert", "mmsu", str(source), str(tmp_path / "o.parquet"), "--limit", "-1"])
    except SystemExit as exc:  # the command line may refuse it before the converter does
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code != 0 and "--limit" in err.splitlines()[-1] and "Traceback" not in err
    args = ["convert", "mmsu", str(source), str(tmp_path / "o.parquet"), "--media-root", str(tmp_path / "nope")]
    assert main(args) != 0
    assert "--media-root" in capsys.readouterr().err


def test_audiomcq_keeps_chain_of_thought(tmp_path, media):
    from verl_modality.audio_contribution.weak_to_strong import W2SConfig
    from verl_modality.data.converters.audiomcq import REASONING_KEY

    base = {
        "source_dataset": "Clotho",
        "question": "What is the main sound?",
        "choices": ["rain", "birds", "traffic", "a bell"],
        "answer": "birds",
        "audio_contribution": "weak",
        "question_type": "sound",
    }
    recs = [
        {
            **base,
            "id": "a0",
            "audio_path": "c/0.wav",
            "unstructured_cot": " Chirping is heard. ",
            "structured_cot": {"perception": "chirping", "answer": "birds"},
        },
        {**base, "id": "a1", "audio_path": "c/1.wav", "structured_cot": {"perception": "chirping"}},
        {**base, "id": "a2", "audio_path": "c/2.wav"},
    ]
    source = media.json(tmp_path / "audiomcq.jsonl", recs, jsonl=True)
    for i in range(3):
        media.wav(tmp_path / f"c/{i}.wav")
    convert("audiomcq", source, tmp_path / "o.parquet", progress=False)
    a, b, c = (r["extra_info"] for r in schema.read_rows(tmp_path / "o.parquet"))
    assert REASONING_KEY == W2SConfig().reasoning_key
    assert a["cot"] == "Chirping is heard." and json.loads(a["structured_cot"])["answer"] == "birds"
    assert a["unstructured_cot"] == " Chirping is heard. "
    assert json.loads(b["cot"]) == {"perception": "chirping"} and b["unstructured_cot"] is None
    assert c["cot"] is None


def test_daily_omni_export_with_embedded_video(tmp_path, media):
    mp4 = media.mp4(tmp_path / "src" / "v.mp4").read_bytes()
    rec = {
        "video_id": "v1",
        "Question": "What happens after the bell?",
        "Choice": ["A. a dog barks", "B. a car passes"],
        "Answer": "A",
        "Type": "Event Sequence",
        "video_category": "pets",
        "video_duration": "30s",
        "video": {"bytes": mp4, "path": "v1_video.mp4"},
    }
    source = tmp_path / "daily_omni.parquet"
    pq.write_table(pa.Table.from_pylist([rec, {**rec, "Type": None}]), source)
    out = tmp_path / "o" / "d.parquet"
    report = convert("daily-omni", source, out, progress=False)
    a, b = schema.read_rows(out)
    assert a["videos"][0]["video"].startswith("media/daily-omni/v1_video-") and a["videos"] == b["videos"]
    assert (a["modality_tag"], a["available"], a["stratum"]) == ("VA", "V", "deficit")  # no separate audio track
    assert report.media_extracted == 1 and report.read_per_category == {"Event Sequence": 1, "(none)": 1}
    assert validate.validate_file(out) == 2
