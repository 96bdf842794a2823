"""MMAU test-mini on the real 1,000-item metadata: a few items get audio, the rest are reported missing."""

from __future__ import annotations

import json

import pytest

from verl_modality import vocabulary
from verl_modality.data import schema, validate
from verl_modality.data.converters import convert
from verl_modality.data.converters.records import ConvertError


@pytest.fixture()
def mmau_copy(tmp_path, mmau_fixture, media):
    """The real metadata next to a test-mini-audios folder holding the audio of the first 5 items."""
    items = json.loads(mmau_fixture.read_text())
    source = media.json(tmp_path / "mmau" / "mmau-test-mini.json", items)
    for item in items[:5]:
        media.wav(source.parent / item["audio_id"])
    return source, items


def test_first_items_convert_and_map_fields(tmp_path, mmau_copy):
    source, items = mmau_copy
    out = tmp_path / "out" / "mmau.parquet"
    report = convert("mmau", source, out, limit=5, progress=False)
    assert (report.rows_read, report.rows_written, report.rows_skipped) == (5, 5, 0)
    assert report.per_tag == {"A": 5} and report.per_stratum == {"exact": 5}
    assert validate.validate_file(out) == 5  # paths are relative to the output file's directory
    rows = schema.read_rows(out)
    for row, item in zip(rows, items[:5], strict=True):
        assert row["id"] == item["id"] and row["question"] == item["question"]
        assert row["choices"] == item["choices"]
        assert row["choices"][vocabulary.LETTERS.index(row["answer"])] == item["answer"]
        assert row["extra_info"]["answer_text"] == item["answer"]
        assert row["extra_info"]["task"] == item["task"] and row["extra_info"]["sub_category"] == item["sub-category"]
        assert (row["modality_tag"], row["available"], row["media_streams"], row["stratum"]) == ("A", "A", "A", "exact")
        assert row["videos"] == [] and row["audios"][0]["audio"].endswith(item["id"] + ".wav")
        assert row["extra_info"]["split"] == "test-mini"
        assert row["data_source"] == "mmau/test-mini"
    assert rows[0]["answer"] == "A"  # "Man" is the first option of the first item
    assert [r["extra_info"]["index"] for r in rows] == list(range(5))


def test_whole_file_fails_listing_missing_rows(tmp_path, mmau_copy):
    source, items = mmau_copy
    with pytest.raises(ConvertError) as info:
        convert("mmau", source, tmp_path / "x.parquet", limit=8, progress=False)
    message = str(info.value)
    assert "3 of 8 rows" in message and "--on-missing skip" in message
    assert [b.row for b in info.value.bad_rows] == [5, 6, 7]
    assert f"row 5 (id {items[5]['id']}): {items[5]['audio_id']}: missing media" in message
    assert not (tmp_path / "x.parquet").exists()


def test_whole_file_skip_counts_missing_and_invalid(tmp_path, mmau_copy):
    source, items = mmau_copy
    out = tmp_path / "all.parquet"
    report = convert("mmau", source, out, on_missing="skip", progress=False)
    assert report.rows_read == 1000 and report.rows_written == 5
    # one garbled item lists 8 options (more than the schema's 6); every other item without audio is missing media
    assert report.skipped == {"missing media": 994, "invalid: too many choices": 1}
    assert report.rows_read == report.rows_written + report.rows_skipped
    text = report.format()
    assert "missing media: 994" in text and "rows written  5" in text and "A 5" in text


def test_duplicate_options_are_dropped(tmp_path, mmau_fixture, media):
    items = json.loads(mmau_fixture.read_text())
    item = next(i for i in items if i["id"] == "dd249c7f-9b01-4114-a7a8-c7d0f4a1ed19")  # four, nine, 14, 14
    source = media.json(tmp_path / "dup.json", [item])
    media.wav(tmp_path / item["audio_id"])
    convert("mmau", source, tmp_path / "dup.parquet", progress=False)
    (row,) = schema.read_rows(tmp_path / "dup.parquet")
    assert row["choices"] == ["four", "nine", "fourteen"] and row["answer"] == "B"
    assert row["extra_info"]["duplicate_choices_dropped"] == "1"


def test_corrupt_audio(tmp_path, mmau_copy, media):
    source, items = mmau_copy
    media.junk(source.parent / items[1]["audio_id"])
    with pytest.raises(ConvertError, match=r"row 1 .*unreadable media"):
        convert("mmau", source, tmp_path / "c.parquet", limit=3, progress=False)
    report = convert("mmau", source, tmp_path / "c.parquet", limit=3, on_missing="skip", progress=False)
    assert report.skipped == {"unreadable media": 1} and report.rows_written == 2
