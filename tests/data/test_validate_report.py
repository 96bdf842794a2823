"""``verl-modality validate-data``: counts per tag/stratum/level and every problem, on a damaged copy of the demo set."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from verl_modality.cli import main
from verl_modality.data import report, schema
from verl_modality.vocabulary import TAGS


@pytest.fixture
def demo_copy(demo_data, tmp_path):
    """A private copy of the session's demo set (the tests damage it)."""
    src, _ = demo_data
    dst = tmp_path / "demo"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def damaged(demo_copy):
    """train.parquet with row 3 made bad (answer not an option letter), row 5's audio corrupted, and one row shown a
    superset of its tag so the stratum counts are not all 'exact'. Returns (path, rows, facts)."""
    path = demo_copy / "train.parquet"
    rows = schema.read_rows(path)
    rows[3][schema.ANSWER] = "Z"
    rows[3][schema.REWARD_MODEL] = {"style": "rule", "ground_truth": "Z"}
    superset = next(i for i, r in enumerate(rows) if r[schema.MODALITY_TAG] == "V" and i not in (3, 5))
    rows[superset] = schema.Sample.from_row(rows[superset]).with_available("VA").to_row()
    schema.write_rows(rows, path)
    audio = rows[5][schema.MEDIA]["audios"][0]
    (demo_copy / audio).write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    return path, rows, {"bad_row": 3, "bad_audio_row": 5, "audio": audio, "superset_row": superset}


def test_report_lists_every_problem_and_counts(damaged):
    path, rows, facts = damaged
    rep = report.build_report(path, progress=False)
    assert not rep.ok and rep.rows == len(rows) == 56

    by_row = Counter(i.row for i in rep.issues)
    assert set(by_row) == {facts["bad_row"], facts["bad_audio_row"]}
    answer = [i for i in rep.issues if i.row == facts["bad_row"]]
    assert any(i.field == schema.ANSWER and "'Z'" in i.problem for i in answer)
    assert all(i.id == rows[facts["bad_row"]][schema.ID] and i.file == str(path) for i in answer)
    (bad_audio,) = [i for i in rep.issues if i.row == facts["bad_audio_row"]]
    assert bad_audio.field == schema.AUDIOS or bad_audio.field == schema.MEDIA
    assert facts["audio"] in bad_audio.problem and "unreadable audio" in bad_audio.problem
    assert rep.media_files == 112 and rep.bad_media_files == 1

    assert rep.by_tag == Counter(r[schema.MODALITY_TAG] for r in rows)
    assert all(rep.by_tag[t] == 8 for t in TAGS)
    assert rep.by_stratum == {"exact": 55, "superset": 1}
    assert rep.by_level == {"uni": 24, "bi": 24, "tri": 8}
    assert rep.by_tag_stratum[("V", "superset")] == 1 and rep.by_tag_stratum[("V", "exact")] == 7
    assert sum(rep.by_tag_stratum.values()) == 56
    assert rep.by_task == {"qa": 56}

    text = rep.render()
    assert f"problems ({len(rep.issues)}):" in text
    assert all(str(i) in text for i in rep.issues)
    assert "by level: uni 24, bi 24, tri 8" in text


def test_cli_exit_status_and_output(damaged, capsys):
    path, rows, facts = damaged
    assert main(["validate-data", str(path), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert rows[facts["bad_row"]][schema.ID] in out and facts["audio"] in out
    assert f"INVALID {path}" in err

    # --no-media: the schema problem only, and no media counted
    assert main(["validate-data", str(path), "--no-media", "--json"]) == 1
    (doc,) = json.loads(capsys.readouterr().out)
    assert {p["row"] for p in doc["problems"]} == {facts["bad_row"]}
    assert doc["media_checked"] is False and doc["media_files"] == 0
    assert doc["by_tag_stratum"]["V/superset"] == 1 and doc["rows"] == 56


def test_clean_file_passes_and_media_root_is_honoured(demo_copy, tmp_path, capsys):
    test_file = demo_copy / "test.parquet"
    assert main(["validate-data", str(test_file), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "28 rows, 56 media files probed (0 bad), 0 problem(s)" in out

    moved = tmp_path / "elsewhere.parquet"
    shutil.copy(test_file, moved)
    assert main(["validate-data", str(moved), "--no-progress"]) == 1  # media resolve next to the file: all missing
    rep = report.build_report(moved, progress=False)
    assert rep.bad_media_files == 56 and all("not found" in i.problem for i in rep.issues)
    assert len(rep.issues) == 56  # one issue per row and missing file (28 rows x video + audio)
    capsys.readouterr()
    assert main(["validate-data", str(moved), "--media-root", str(demo_copy), "--no-progress"]) == 0


def test_unreadable_parquet_is_one_problem(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file")
    rep = report.build_report(path, progress=False)
    assert rep.rows == 0 and len(rep.issues) == 1 and "cannot read parquet" in rep.issues[0].problem
    assert main(["validate-data", str(path)]) == 1
