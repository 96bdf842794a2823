"""The synthetic demo set: balance, determinism, validity, and answers that can only be read off the media."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from pathlib import Path

import pytest

from verl_modality import vocabulary
from verl_modality.data import media, schema, synthetic, validate
from verl_modality.data.synthetic import ANIMALS, COLOURS, PITCHES, fact_text, make_demo_data
from verl_modality.vocabulary import TAGS


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def test_summary_and_balance(demo_data):
    out, summary = demo_data
    for split, n in (("train", 56), ("test", 28)):
        info = summary["splits"][split]
        assert info["rows"] == n and Path(info["path"]) == out / f"{split}.parquet"
        rows = schema.read_rows(out / f"{split}.parquet")
        counts = Counter(r["modality_tag"] for r in rows)
        assert set(counts) == set(TAGS) and set(counts.values()) == {n // 7}
        assert info["tags"] == dict(counts)
        assert [r["extra_info"]["index"] for r in rows] == list(range(n))
        assert len({r["id"] for r in rows}) == n
        assert len(list((out / "media" / split).iterdir())) == 2 * n


def test_demo_rows_are_exact_with_all_media(demo_data):
    out, _ = demo_data
    for split in ("train", "test"):
        for row in schema.read_rows(out / f"{split}.parquet"):
            assert row["media_streams"] == "VAS" and row["available"] == row["modality_tag"]
            assert row["stratum"] == "exact" and row["task"] == "qa"
            assert row["data_source"] == "verl_modality/demo" and row["extra_info"]["split"] == split
            assert len(row["videos"]) == ("V" in row["modality_tag"]) and len(row["audios"]) == (
                "A" in row["modality_tag"]
            )
            assert (row["subtitle"] in row["prompt"][0]["content"]) == ("S" in row["modality_tag"])


def test_validate_file_passes(demo_data):
    out, _ = demo_data
    assert validate.validate_file(out / "train.parquet") == 56
    assert validate.validate_file(out / "test.parquet") == 28


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_demo_data(tmp_path / "a", seed=3, n_train=14, n_test=7, progress=False)
    b = make_demo_data(tmp_path / "b", seed=3, n_train=14, n_test=7, progress=False)
    c = make_demo_data(tmp_path / "c", seed=4, n_train=14, n_test=7, progress=False)
    assert a["splits"]["train"]["tags"] == b["splits"]["train"]["tags"]
    rows = {k: schema.read_rows(tmp_path / k / "train.parquet") for k in "abc"}
    assert rows["a"] == rows["b"] and rows["a"] != rows["c"]
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")  # parquet files and media, byte for byte
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")
    assert c["splits"]["test"]["rows"] == 7


def test_rerun_with_fewer_records_removes_stale_media(tmp_path):
    make_demo_data(tmp_path, seed=0, n_train=14, n_test=7, progress=False)
    summary = make_demo_data(tmp_path, seed=0, n_train=7, n_test=0, progress=False, overwrite=True)
    assert len(list((tmp_path / "media" / "train").iterdir())) == 14
    assert not list((tmp_path / "media" / "test").iterdir()) and not (tmp_path / "test.parquet").exists()
    assert set(summary["splits"]) == {"train"} and validate.validate_file(tmp_path / "train.parquet") == 7


def test_a_folder_holding_parquet_files_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "test.parquet").write_bytes(b"the user's")
    with pytest.raises(FileExistsError, match=r"already holds test\.parquet: pass overwrite=True"):
        make_demo_data(tmp_path, seed=0, n_train=7, n_test=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.parquet"]  # no media, no train.parquet
    assert (tmp_path / "test.parquet").read_bytes() == b"the user's"
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        make_demo_data(tmp_path / "f" / "data", n_train=7, n_test=0, progress=False)


def test_unbalanced_sizes_spread_the_remainder(tmp_path):
    summary = make_demo_data(tmp_path, seed=0, n_train=9, n_test=1, progress=False)
    assert list(summary["splits"]["train"]["tags"].values()) == [2, 2, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError):
        make_demo_data(tmp_path, n_train=0)


# ----------------------------------------------------------------------------------------- answers need the media


def _recover_facts(row: dict, root: Path, decode) -> dict[str, set[str]]:
    """Every phrase an option could use for the clip's facts, read from the media files (not from the row's
    answer): colour from the frames, beep count and pitch from the audio, animal from the subtitle."""
    frames = media.load_video(root / row["media"]["videos"][0])
    wave = media.load_audio(root / row["media"]["audios"][0])
    frequency = decode.frequency(wave, media.SAMPLE_RATE)
    pitch = min(PITCHES, key=lambda name: abs(PITCHES[name] - frequency))
    animals = [a for a in ANIMALS if f" {a} " in f" {row['subtitle'].rstrip('.')} "]
    assert len(animals) == 1, row["subtitle"]
    return {
        "V": {fact_text("V", decode.colour(frames, COLOURS))},
        "A": {fact_text("A", decode.bursts(wave, media.SAMPLE_RATE)), fact_text("A", pitch)},
        "S": {fact_text("S", animals[0])},
    }


def _consistent(choices: list[str], facts: dict[str, set[str]], streams: str, tag: str) -> list[int]:
    """Options whose phrase for each of ``streams`` agrees with the recovered facts (an option lists the tag's
    streams in order, one phrase each)."""
    out = []
    for i, option in enumerate(choices):
        phrases = dict(zip(tag, synthetic.option_facts(option), strict=True))
        if all(phrases[s] in facts[s] for s in streams):
            out.append(i)
    return out


@pytest.mark.parametrize("split", ["train", "test"])
def test_exactly_the_answer_matches_the_media(demo_data, decode, split):
    out, _ = demo_data
    for row in schema.read_rows(out / f"{split}.parquet"):
        facts = _recover_facts(row, out, decode)
        tag = row["modality_tag"]
        matches = _consistent(row["choices"], facts, tag, tag)
        assert [vocabulary.letter(i) for i in matches] == [row["answer"]], (row["id"], row["choices"], facts)


def test_every_tagged_stream_is_needed(demo_data, decode):
    """With the facts of any strict subset of the tag's streams, at least two options remain possible."""
    out, _ = demo_data
    rows = schema.read_rows(out / "test.parquet")
    checked = Counter()
    for row in rows:
        tag = row["modality_tag"]
        facts = _recover_facts(row, out, decode)
        for k in range(len(tag)):
            for subset in itertools.combinations(tag, k):
                assert len(_consistent(row["choices"], facts, "".join(subset), tag)) >= 2, (row["id"], subset)
                checked[tag] += 1
    assert set(checked) == set(TAGS)


def test_distractor_streams_vary(demo_data, decode):
    """Streams outside the tag hold random content, not a constant that would leak the answer elsewhere."""
    out, _ = demo_data
    rows = [r for r in schema.read_rows(out / "train.parquet") if r["modality_tag"] == "S"]
    colours = {decode.colour(media.load_video(out / r["media"]["videos"][0]), COLOURS) for r in rows}
    assert len(colours) >= 2


def test_caption_rows_describe_their_media(tmp_path, decode):
    out = tmp_path / "cap"
    summary = make_demo_data(out, seed=3, n_train=9, n_test=0, caption_every=3, progress=False)
    assert summary["splits"]["train"]["captions"] == 3
    assert validate.validate_file(out / "train.parquet") == 9
    rows = schema.read_rows(out / "train.parquet")
    for i, row in enumerate(rows):
        assert row["task"] == ("caption" if i % 3 == 2 else "qa"), i
        if row["task"] != "caption":
            continue
        refs = {k: v for k, v in row["extra_info"]["reference_captions"].items() if v is not None}
        assert set(refs) == set(row["modality_tag"]) and row["choices"] == []
        assert row["answer"] == " ".join(refs[s] for s in "VAS" if s in refs)
        assert row["reward_model"] == {"style": "judge", "ground_truth": row["answer"]}
        frames = media.load_video(out / row["media"]["videos"][0])
        wave = media.load_audio(out / row["media"]["audios"][0])
        if "V" in refs:  # the reference names the colour the frames show, the beeps the audio holds
            assert f" {decode.colour(frames, COLOURS)} picture" in refs["V"]
        if "A" in refs:
            assert refs["A"].split()[2] == str(decode.bursts(wave, media.SAMPLE_RATE))
    with pytest.raises(ValueError, match="caption_every"):
        make_demo_data(tmp_path / "bad", n_train=1, n_test=0, caption_every=-1, progress=False)


def test_media_size_sets_clip_length_and_resolution(tmp_path):
    from verl_modality.data.synthetic import REALISTIC, MediaSize

    make_demo_data(tmp_path / "d", seed=0, n_train=1, n_test=0, progress=False, media_size=REALISTIC)
    row = schema.read_rows(tmp_path / "d" / "train.parquet")[0]
    wave = media.load_audio(str(tmp_path / "d" / row["media"]["audios"][0]), sr=16000)  # every clip's media
    frames = media.load_video(str(tmp_path / "d" / row["media"]["videos"][0]))
    assert len(wave) == 10 * 16000 and frames.shape == (20, 448, 448, 3)
    with pytest.raises(ValueError, match="frame_size=57"):
        MediaSize(frame_size=57)
