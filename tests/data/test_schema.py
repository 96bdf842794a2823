"""Sample schema: tag helpers, the Sample record, parquet I/O and the validator's checks and messages."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from verl_modality import vocabulary
from verl_modality.data import media, schema, validate
from verl_modality.data.schema import Sample
from verl_modality.data.validate import SchemaError
from verl_modality.vocabulary import TAGS

# --------------------------------------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    ("value", "expected"),
    [("AV", "VA"), ("vas", "VAS"), ({"S", "V"}, "VS"), (["A"], "A"), ("SAV", "VAS"), ("VVA", "VA")],
)
def test_canonical_tag_normalises(value, expected):
    assert vocabulary.canonical_tag(value) == expected


@pytest.mark.parametrize("value", ["VX", "I", "V A", ["V", "T"]])
def test_canonical_tag_rejects_unknown_streams_naming_the_value(value):
    with pytest.raises(ValueError) as info:
        vocabulary.canonical_tag(value)
    assert repr(value) in str(info.value)


def test_canonical_tag_empty():
    with pytest.raises(ValueError, match="empty"):
        vocabulary.canonical_tag("")
    assert vocabulary.canonical_tag("", allow_empty=True) == ""


def test_every_tag_is_canonical_and_levels():
    assert [vocabulary.canonical_tag(t) for t in TAGS] == list(TAGS)
    assert [vocabulary.level(t) for t in TAGS] == ["uni"] * 3 + ["bi"] * 3 + ["tri"]


@pytest.mark.parametrize(
    ("tag", "available", "stratum"),
    [("V", "V", "exact"), ("VA", "AV", "exact"), ("V", "VAS", "superset"), ("AS", "VAS", "superset"),
     ("VA", "V", "deficit"), ("S", "", "deficit"), ("VS", "VA", "deficit"), ("VAS", "VA", "deficit")],
)  # fmt: skip
def test_stratum_of(tag, available, stratum):
    assert vocabulary.stratum_of(tag, available) == stratum


# --------------------------------------------------------------------------------------------------------- Sample


def _sample(**overrides) -> Sample:
    kwargs = dict(
        id="s-0",
        question="What is it?",
        choices=["red video; 2 beeps", "blue video; 2 beeps", "red video; 3 beeps"],
        answer="A",
        modality_tag="VA",
        videos=["media/clip.mp4"],
        audios=["media/clip.wav"],
        subtitle="A fox runs by.",
        data_source="tests",
        index=3,
        split="test",
    )
    kwargs.update(overrides)
    return Sample.create(**kwargs)


def test_sample_create_derives_streams_prompt_and_stratum():
    s = _sample()
    assert (s.media_streams, s.available, s.stratum, s.level) == ("VAS", "VA", "exact", "bi")
    row = s.to_row()
    assert list(row)[: len(schema.REQUIRED_FIELDS)] == list(schema.REQUIRED_FIELDS)
    assert row["videos"] == [{"video": "media/clip.mp4"}] and row["audios"] == [{"audio": "media/clip.wav"}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "A"}
    assert row["extra_info"] == {
        "index": 3,
        "split": "test",
        "modality_tag": "VA",
        "id": "s-0",
        "sample_task": "qa",
        "choices": list(s.choices),
    }
    content = row["prompt"][0]["content"]
    assert content.count("<video>") == 1 and content.count("<audio>") == 1
    assert "A fox runs by." not in content  # S is not shown for a VA record
    assert "C. red video; 3 beeps" in content and "[B]" in content


def test_sample_with_available_rebuilds_the_prompt():
    superset = _sample().with_available("VAS")
    assert superset.stratum == "superset" and "A fox runs by." in superset.prompt[0]["content"]
    deficit = _sample().with_available("S")
    assert deficit.stratum == "deficit" and deficit.videos == [] and deficit.audios == []
    assert deficit.all_videos == ["media/clip.mp4"]
    assert schema.count_placeholders(deficit.prompt) == {"<image>": 0, "<video>": 0, "<audio>": 0}
    with pytest.raises(ValueError, match="media for 'VA'"):
        _sample(subtitle="").with_available("VS")


def test_sample_row_round_trip_keeps_extra_columns():
    row = _sample(extra={"source_id": "x9"}, extra_info={"origin": "unit"}).to_row()
    back = Sample.from_row(row)
    assert back.to_row() == row
    assert row["source_id"] == "x9" and row["extra_info"]["origin"] == "unit"


def test_write_and_read_rows_keep_types(tmp_path):
    rows = [_sample(id=f"s-{i}").with_available("S").to_row() for i in range(3)]  # every videos list empty
    path = schema.write_rows(rows, tmp_path / "x.parquet")
    import pyarrow.parquet as pq

    arrow = pq.read_schema(path)
    assert str(arrow.field("videos").type) == "list<element: struct<video: string>>"
    assert schema.read_rows(path) == rows


# --------------------------------------------------------------------------------------------------------- validator


@pytest.fixture
def root(tmp_path):
    """A dataset root with one real video and one real audio file."""
    from verl_modality.data.synthetic import beep_wave, colour_frames

    media.write_video(tmp_path / "media" / "clip.mp4", colour_frames("red"))
    media.write_audio(tmp_path / "media" / "clip.wav", beep_wave(2, "low"))
    return tmp_path


@pytest.fixture
def good_row():
    return _sample().to_row()


def test_good_row_passes(root, good_row):
    validate.validate_row(good_row, 0, root=root)
    validate.validate_row(_sample().with_available("VAS").to_row(), 0, root=root)
    validate.validate_row(_sample().with_available("").to_row(), 0, root=root)


def test_row_from_pandas_passes(root, good_row, tmp_path):
    import pandas as pd

    path = schema.write_rows([good_row], tmp_path / "p.parquet")
    row = pd.read_parquet(path).iloc[0].to_dict()  # lists come back as numpy arrays
    assert isinstance(row["choices"], np.ndarray)
    validate.validate_row(row, 0, root=root)


def _set(path, value):
    def mutate(row, root):
        target = row
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _corrupt_audio(row, root):
    (root / "media" / "bad.wav").write_bytes(b"RIFF\x00\x00junkjunkjunk" * 50)
    row["audios"] = [{"audio": "media/bad.wav"}]
    row["media"]["audios"] = ["media/bad.wav"]


def _no_audio_placeholder(row, root):
    row["prompt"][0]["content"] = row["prompt"][0]["content"].replace("<audio>", "")


BAD_CASES = {
    "tag outside the seven": (
        _set(["modality_tag"], "VX"),
        "modality_tag",
        "'VX' is not one of V, A, S, VA, VS, AS, VAS",
    ),
    "tag not canonical": (_set(["modality_tag"], "AV"), "modality_tag", "canonical order"),
    "available not subset": (
        lambda row, root: row.update(media_streams="VA", subtitle="", available="VAS", stratum="superset"),
        "available",
        "'VAS' is not a subset of media_streams 'VA'",
    ),
    "inconsistent stratum": (_set(["stratum"], "superset"), "stratum", "expected 'exact'"),
    "unknown stratum": (_set(["stratum"], "partial"), "stratum", "not one of exact, superset, deficit"),
    "answer out of range": (_set(["answer"], "D"), "answer", "'D' is not an option letter of the 3 choices"),
    "too many choices": (_set(["choices"], list("abcdefg")), "choices", "has 7 options"),
    "duplicate choices": (_set(["choices"], ["x", "x"]), "choices", "distinct"),
    "ground truth differs": (_set(["reward_model", "ground_truth"], "B"), "reward_model", "differs from answer"),
    "placeholder mismatch": (_no_audio_placeholder, "prompt", "0 <audio> placeholder(s) but audios has 1"),
    "image placeholder": (
        lambda row, root: row["prompt"][0].update(content="<image> " + row["prompt"][0]["content"]),
        "prompt",
        "<image> placeholder",
    ),
    "missing media": (_set(["videos", 0, "video"], "media/none.mp4"), "videos", "not found"),
    "corrupt wav": (_corrupt_audio, "audios", "media/bad.wav"),
    "shown stream without media": (_set(["audios"], []), "audios", "A is available but no audio"),
    "prompt not a list": (_set(["prompt"], "<video> hello"), "prompt", "expected a non-empty list"),
    "choices not a list": (_set(["choices"], 3), "choices", "expected a list of option strings, got int"),
    "videos not a list": (_set(["videos"], "clip.mp4"), "videos", "expected a list of {'video': path}"),
    "missing field": (lambda row, root: row.pop("task"), "task", "missing"),
    "wrong type": (_set(["subtitle"], 3), "subtitle", "expected a string"),
    "extra_info tag differs": (_set(["extra_info", "modality_tag"], "V"), "extra_info", "differs from the row's 'VA'"),
    "unknown task": (_set(["task"], "caption"), "task", "'caption' is not one of qa"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_row_names_row_id_and_field(root, good_row, case):
    mutate, field, text = BAD_CASES[case]
    row = copy.deepcopy(good_row)
    mutate(row, root)
    with pytest.raises(SchemaError) as info:
        validate.validate_row(row, 7, root=root, source="set/x.parquet")
    issues = [i for i in info.value.issues if i.field == field]
    assert issues, f"no issue on field {field!r}: {info.value}"
    assert any(text in str(i) for i in issues), str(info.value)
    assert all(i.row == 7 and i.file == "set/x.parquet" for i in info.value.issues)
    assert str(info.value).startswith("set/x.parquet row 7 (id s-0): field '")


def test_media_checks_can_be_skipped(root, good_row):
    row = copy.deepcopy(good_row)
    _corrupt_audio(row, root)
    validate.validate_row(row, 0, root=root, check_media=False)
    with pytest.raises(SchemaError, match="bad.wav"):
        validate.validate_row(row, 0, root=root)


def test_validate_file_message_format_and_count(root):
    rows = [_sample(id=f"demo-train-{i:04d}").to_row() for i in range(5)]
    rows[3]["modality_tag"] = "VX"
    rows[4]["answer"] = "F"
    rows[4]["reward_model"]["ground_truth"] = "F"
    path = schema.write_rows(rows, root / "train.parquet")
    with pytest.raises(SchemaError) as info:
        validate.validate_file(path)
    message = str(info.value)
    first = f"{path} row 3 (id demo-train-0003): field 'modality_tag': 'VX' is not one of V, A, S, VA, VS, AS, VAS"
    assert message.splitlines()[0] == first
    assert len(info.value.issues) == 2  # checks that depend on a valid tag are skipped for row 3
    assert "2 problems in total" in message and "row 4 (id demo-train-0004): field 'answer'" in message
    assert info.value.first.row == 3 and info.value.first.field == "modality_tag"


def test_validate_file_resolves_paths_against_its_directory_or_root(root, tmp_path_factory):
    rows = [_sample(id=f"r{i}").to_row() for i in range(2)]
    path = schema.write_rows(rows, root / "data.parquet")
    assert validate.validate_file(path) == 2
    elsewhere = schema.write_rows(rows, tmp_path_factory.mktemp("other") / "data.parquet")
    with pytest.raises(SchemaError, match="not found"):
        validate.validate_file(elsewhere)
    assert validate.validate_file(elsewhere, root=root) == 2
    absolute = [_sample(id="abs", videos=[str(root / "media/clip.mp4")], audios=[str(root / "media/clip.wav")])]
    assert validate.validate_file(schema.write_rows([r.to_row() for r in absolute], elsewhere)) == 1


def test_validate_file_duplicate_ids_and_unreadable_file(root, tmp_path):
    rows = [_sample().to_row(), _sample().to_row()]
    path = schema.write_rows(rows, root / "dup.parquet")
    with pytest.raises(SchemaError, match=r"row 1 \(id s-0\): field 'id': duplicate id, first used by row 0"):
        validate.validate_file(path, check_media=False)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(SchemaError, match="junk.parquet: cannot read parquet"):
        validate.validate_file(junk)
