"""Audio-contribution filtering: the vote, silent audio, resuming, refused configs, report numbers, a real voter."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from verl_modality import vocabulary
from verl_modality.audio_contribution.filter import ACFConfig, format_report, run_acf, score_response
from verl_modality.audio_contribution.voters import VoterSpec, load_voter_specs, openai_messages
from verl_modality.data import schema, validate

N = 7
# voter -> row indices it answers correctly under silence. Votes per row: 3, 2, 2, 1, 2, 1, 0.
RIGHT = {"v1": {0, 1, 2, 3}, "v2": {0, 1, 4}, "v3": {0, 2, 4, 5}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from verl_modality.data.synthetic import make_demo_data

    out = tmp_path_factory.mktemp("acf_demo")
    make_demo_data(out, seed=0, n_train=N, n_test=0, progress=False)
    # every row shows all its streams, so every row has audio for the silence to replace
    rows = [schema.Sample.from_row(r).with_available("VAS").to_row() for r in schema.read_rows(out / "train.parquet")]
    return schema.write_rows(rows, out / "full.parquet")


def _reply(row: dict, right: bool) -> str:
    n = len(row[schema.CHOICES])
    idx = vocabulary.LETTERS.index(row[schema.ANSWER])
    return f"I think it is [{vocabulary.LETTERS[idx if right else (idx + 1) % n]}]"


def _index(row: dict) -> int:
    return int(row[schema.ID].rsplit("-", 1)[1])


def make_voter(right: set[int], log: list, fail_at: int | None = None, with_audio: str = "same"):
    """A callable voter: right on the rows in ``right`` under silence; with real audio per ``with_audio``
    (same | all | none). Every call is logged; call number ``fail_at`` raises."""

    def answer(rows: list[dict]) -> list[str]:
        log.append([r[schema.ID] for r in rows])
        if fail_at is not None and len(log) == fail_at:
            raise RuntimeError("voter crashed")
        out = []
        for r in rows:
            silent = all("silence_" in a["audio"] for a in r[schema.AUDIOS])
            ok = _index(r) in right if silent or with_audio == "same" else with_audio == "all"
            out.append(_reply(r, ok))
        return out

    return answer


def _specs(logs: dict, batch_size: int = 1, **kwargs) -> list[VoterSpec]:
    return [
        VoterSpec(name=n, kind="callable", fn=make_voter(RIGHT[n], logs.setdefault(n, []), **kwargs.get(n, {})),
                  batch_size=batch_size)
        for n in RIGHT
    ]  # fmt: skip


def test_vote_two_of_three_splits_and_report(demo, tmp_path):
    out = tmp_path / "acf"
    report = run_acf(demo, _specs({}, batch_size=3), out, ACFConfig(progress=False))
    weak, strong = schema.read_rows(out / "weak.parquet"), schema.read_rows(out / "strong.parquet")
    assert sorted(_index(r) for r in weak) == [0, 1, 2, 4]
    assert sorted(_index(r) for r in strong) == [3, 5, 6]
    assert validate.validate_file(out / "weak.parquet") == 4 and validate.validate_file(out / "strong.parquet") == 3
    by_id = {r[schema.ID]: r for r in weak + strong}
    assert sorted(by_id) == sorted(r[schema.ID] for r in schema.read_rows(demo))  # every row exactly once
    info = by_id["demo-train-0003"][schema.EXTRA_INFO]
    assert info["silent_votes"] == 1 and info["acf_split"] == "strong"
    assert info["silent_correct"] == {"v1": True, "v2": False, "v3": False}
    assert by_id["demo-train-0000"][schema.EXTRA_INFO]["silent_votes"] == 3
    # report: hand-counted
    assert (report["weak"], report["strong"], report["items"]) == (4, 3, 7)
    assert report["vote_counts"] == {"0": 1, "1": 2, "2": 3, "3": 1}
    acc = {v: e["silent_accuracy"] for v, e in report["per_voter"].items()}
    assert acc == pytest.approx({"v1": 4 / 7, "v2": 3 / 7, "v3": 4 / 7})
    assert report["per_source"] == {"verl_modality/demo": {"items": 7, "weak": 4, "strong": 3, "weak_fraction": 4 / 7}}
    assert report["ac"]["computed"] is False and "--with-audio" in report["ac"]["note"]
    assert report["rows_without_audio"] == 0
    assert json.loads((out / "report.json").read_text())["weak"] == 4
    text = format_report(report)
    assert "AC not computed" in text and "weak 4, strong 3" in text


@pytest.mark.parametrize("min_votes, weak", [(1, [0, 1, 2, 3, 4, 5]), (3, [0])])
def test_configurable_threshold(demo, tmp_path, min_votes, weak):
    report = run_acf(demo, _specs({}, batch_size=7), tmp_path, ACFConfig(min_votes=min_votes, progress=False))
    assert sorted(_index(r) for r in schema.read_rows(tmp_path / "weak.parquet")) == weak
    assert report["strong"] == N - len(weak)


def test_min_votes_above_voters_is_an_error(demo, tmp_path):
    with pytest.raises(ValueError, match="min_votes=4 is more than the 3 voter"):
        run_acf(demo, _specs({}), tmp_path, ACFConfig(min_votes=4, progress=False))


def test_with_audio_gives_audio_contribution(demo, tmp_path):
    modes = {"v1": {"with_audio": "all"}, "v2": {"with_audio": "same"}, "v3": {"with_audio": "none"}}
    report = run_acf(demo, _specs({}, batch_size=4, **modes), tmp_path, ACFConfig(with_audio=True, progress=False))
    v1, v2, v3 = (report["per_voter"][v] for v in ("v1", "v2", "v3"))
    assert (v1["audio_accuracy"], v1["mean_ac"]) == (1.0, pytest.approx(3 / 7))
    assert (v1["ac_positive"], v1["ac_zero"], v1["ac_negative"]) == (3, 4, 0)
    assert v2["mean_ac"] == 0.0 and v2["ac_zero"] == 7
    assert (v3["audio_accuracy"], v3["ac_negative"], v3["ac_zero"]) == (0.0, 4, 3)
    # items with AC 0 for every voter: v1 right in silence and v3 wrong in silence -> rows 1 and 3
    assert report["ac"] == {"computed": True, "mean_ac": pytest.approx((3 - 4) / 21), "items_zero_ac_all_voters": 2}
    rows = {r[schema.ID]: r for r in schema.read_rows(tmp_path / "all.parquet")}
    assert rows["demo-train-0006"][schema.EXTRA_INFO]["ac"] == {"v1": 1, "v2": 0, "v3": 0}
    assert "mean AC" in format_report(report)


def test_silent_audio_replacement(demo, tmp_path):
    original = schema.read_rows(demo)
    digests = {
        p: hashlib.sha1((demo.parent / p).read_bytes()).hexdigest() for r in original for p in r["media"]["audios"]
    }
    seen: list[dict] = []

    def record(rows):
        seen.extend(rows)
        return ["[A]"] * len(rows)

    spec = VoterSpec(name="rec", kind="callable", fn=record)
    report = run_acf(demo, [spec], tmp_path, ACFConfig(min_votes=1, silence_seconds=2.5, progress=False))
    silent = Path(report["silent_wav"])
    assert silent.parent == (tmp_path / "media").resolve()
    info = sf.info(silent)
    assert (info.samplerate, info.frames, info.channels) == (16000, 40000, 1)  # 2.5 s, not the clip's length
    wave, _ = sf.read(silent)
    assert not np.any(wave)
    by_id = {r[schema.ID]: r for r in original}
    assert len(seen) == N
    for row in seen:
        src = by_id[row[schema.ID]]
        assert [a["audio"] for a in row[schema.AUDIOS]] == [str(silent)] * len(src[schema.AUDIOS])
        assert row["media"]["audios"] == [str(silent)]
        assert [v["video"] for v in row[schema.VIDEOS]] == [str(demo.parent / v["video"]) for v in src[schema.VIDEOS]]
        assert (row[schema.SUBTITLE], row[schema.PROMPT]) == (src[schema.SUBTITLE], src[schema.PROMPT])
    assert {p: hashlib.sha1((demo.parent / p).read_bytes()).hexdigest() for p in digests} == digests
    # the outputs keep the real audio, with absolute paths
    out = schema.read_rows(tmp_path / "all.parquet")
    assert out[0]["media"]["audios"] == [str(demo.parent / original[0]["media"]["audios"][0])]
    # the default is 30 s
    assert sf.info(
        run_acf(demo, [spec], tmp_path / "d", ACFConfig(min_votes=1, progress=False))["silent_wav"]
    ).frames == (30 * 16000)


def test_resume_after_a_crash_asks_only_missing_items(demo, tmp_path):
    logs: dict[str, list] = {}
    with pytest.raises(RuntimeError, match="voter crashed"):
        run_acf(demo, _specs(logs, v1={"fail_at": 4}), tmp_path, ACFConfig(progress=False))
    assert len(logs["v1"]) == 4 and not logs["v2"]  # v1 died on its 4th item, before v2 was asked
    answers = tmp_path / "answers" / "v1.silent.jsonl"
    assert len(answers.read_text().splitlines()) == 1 + 3  # header + the 3 finished items
    with answers.open("a") as f:  # a crash in the middle of a write leaves a partial line
        f.write('{"id": "demo-train-00')

    logs2: dict[str, list] = {}
    report = run_acf(demo, _specs(logs2), tmp_path, ACFConfig(progress=False))
    asked = [i for call in logs2["v1"] for i in call]
    assert asked == [f"demo-train-{i:04d}" for i in range(3, 7)]  # the 3 finished items are not asked again
    assert (len(logs2["v2"]), len(logs2["v3"])) == (7, 7)
    assert (report["weak"], report["strong"]) == (4, 3)  # same as an uninterrupted run

    logs3: dict[str, list] = {}
    again = run_acf(demo, _specs(logs3), tmp_path, ACFConfig(progress=False))
    assert all(not calls for calls in logs3.values())  # nothing left to ask
    assert again["vote_counts"] == report["vote_counts"]


def test_changed_voter_config_is_refused(demo, tmp_path):
    spec = VoterSpec(name="v", kind="callable", fn=make_voter({0}, []), params={"prompt": 1})
    run_acf(demo, [spec], tmp_path, ACFConfig(min_votes=1, limit=2, progress=False))
    changed = VoterSpec(name="v", kind="callable", fn=make_voter({0}, []), params={"prompt": 2})
    with pytest.raises(ValueError, match=r"voter 'v'.*another configuration.*config\.params"):
        run_acf(demo, [changed], tmp_path, ACFConfig(min_votes=1, limit=2, progress=False))
    with pytest.raises(ValueError, match="silence_seconds"):
        run_acf(demo, [spec], tmp_path, ACFConfig(min_votes=1, limit=2, silence_seconds=10, progress=False))


def test_voters_file_and_cli(demo, tmp_path, monkeypatch, capsys):
    from verl_modality.cli import main

    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / "acf_fake_voters.py").write_text(
        textwrap.dedent(
            """
            def always_a(rows):
                return ["<answer>A</answer>"] * len(rows)
            """
        )
    )
    monkeypatch.syspath_prepend(str(pkg))
    voters = tmp_path / "voters.yaml"
    voters.write_text(
        "voters:\n"
        "  - {name: a1, kind: callable, target: 'acf_fake_voters:always_a'}\n"
        "  - {name: a2, kind: callable, target: 'acf_fake_voters:always_a'}\n"
    )
    assert [s.name for s in load_voter_specs(voters)] == ["a1", "a2"]
    rows = schema.read_rows(demo)[:5]
    n_a = sum(r[schema.ANSWER] == "A" for r in rows)
    assert (
        main(["acf", "--data", str(demo), "--voters", str(voters), "--out-dir", str(tmp_path / "o"), "--limit", "5"])
        == 0
    )
    printed = capsys.readouterr().out
    assert f"weak {n_a}, strong {5 - n_a}" in printed
    # clear errors
    bad = tmp_path / "bad.yaml"
    bad.write_text("voters:\n  - {name: x, kind: local}\n")
    with pytest.raises(ValueError, match="kind 'local' needs model_path"):
        load_voter_specs(bad)
    bad.write_text("voters:\n  - {name: x, kind: openai, base_url: u, model: m, sampling: {top_k: 3}}\n")
    with pytest.raises(ValueError, match="unknown sampling key"):
        load_voter_specs(bad)
    assert (
        main(
            ["acf", "--data", str(demo), "--voters", str(voters), "--out-dir", str(tmp_path / "o2"), "--min-votes", "3"]
        )
        == 1
    )
    assert "acf: --min-votes 3 is more than the 2 voter" in capsys.readouterr().err  # the flag as typed


def test_scoring_follows_the_task_reward(demo):
    row = schema.read_rows(demo)[0]
    letter = row[schema.ANSWER]
    text = row[schema.CHOICES][vocabulary.LETTERS.index(letter)]
    assert score_response(row, f"<answer>{letter}</answer>") and score_response(row, f"so [{letter}]")
    assert not score_response(row, "no idea")
    mmau = {**row, schema.DATA_SOURCE: "mmau/test-mini"}
    assert score_response(mmau, f"It is {text}.")  # MMAU string match on the option text
    assert score_response(mmau, f"<answer>{letter}</answer>")  # a bare letter stands for its option's text


def test_openai_messages_carry_base64_wav_audio(demo, tmp_path):
    import base64
    import io

    from verl_modality.audio_contribution.filter import silence_row, write_silence
    from verl_modality.data.dataset import resolve_media_paths

    row = resolve_media_paths(schema.read_rows(demo)[0], demo.parent)
    row = silence_row(row, write_silence(tmp_path, seconds=1.0))
    messages = openai_messages(row)
    parts = [p for m in messages if isinstance(m["content"], list) for p in m["content"]]
    audio = [p for p in parts if p["type"] == "input_audio"]
    video = [p for p in parts if p["type"] == "video_url"]
    assert (len(audio), len(video)) == (1, 1)
    wave, sr = sf.read(io.BytesIO(base64.b64decode(audio[0]["input_audio"]["data"])))
    assert (sr, len(wave), audio[0]["input_audio"]["format"]) == (16000, 16000, "wav") and not np.any(wave)
    mp4 = (demo.parent / schema.read_rows(demo)[0][schema.VIDEOS][0]["video"]).read_bytes()
    assert video[0]["video_url"]["url"] == "data:video/mp4;base64," + base64.b64encode(mp4).decode()
    text = "".join(p.get("text", "") for p in parts)
    assert row[schema.QUESTION] in text and "<audio>" not in text


def test_tiny_model_as_a_real_voter(demo, tmp_path, family_model_dir):
    spec = VoterSpec(name="tiny", kind="local", model_path=str(family_model_dir[1]), max_response_length=3)
    report = run_acf(demo, [spec], tmp_path, ACFConfig(min_votes=1, limit=2, silence_seconds=1.0, progress=False))
    lines = (tmp_path / "answers" / "tiny.silent.jsonl").read_text().splitlines()
    header = json.loads(lines[0])["header"]
    assert header["config"]["sampling"] == {"temperature": 0.0} and header["silence_seconds"] == 1.0
    answers = [json.loads(x) for x in lines[1:]]
    assert [a["id"] for a in answers] == ["demo-train-0000", "demo-train-0001"]
    assert all(isinstance(a["response"], str) for a in answers)
    assert report["weak"] + report["strong"] == 2
    rows = schema.read_rows(tmp_path / "all.parquet")
    for row, a in zip(rows, answers, strict=True):  # the split follows the recorded answers
        assert row[schema.EXTRA_INFO]["silent_correct"]["tiny"] == score_response(row, a["response"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_openai_voter_sends_greedy_requests_and_fails_clearly(demo, tmp_path, monkeypatch):
    from verl_modality.audio_contribution.voters import OpenAIVoter, VoterError
    from verl_modality.rewards.openai_client import ChatClient, ChatError

    sent: list = []

    def fake_chat_many(self, requests, progress=False, **params):
        sent.append((requests, params))
        return ["[A]" if i % 2 == 0 else ChatError("HTTP 500") for i in range(len(requests))]

    monkeypatch.setattr(ChatClient, "chat_many", fake_chat_many)
    spec = VoterSpec(name="api", kind="openai", base_url="http://127.0.0.1:9/v1", model="m", max_response_length=64)
    voter = OpenAIVoter(spec)
    from verl_modality.data.dataset import resolve_media_paths

    rows = [resolve_media_paths(r, demo.parent) for r in schema.read_rows(demo)[:2]]
    with pytest.raises(VoterError, match="voter 'api', sample 'demo-train-0001'.*HTTP 500"):
        voter.answer(rows)
    assert sent[0][1] == {"max_tokens": 64, "temperature": 0.0}  # greedy by default
    assert voter.answer(rows[:1]) == ["[A]"]
    assert [p["type"] for p in sent[1][0][0][-1]["content"] if p["type"] != "text"] == ["video_url", "input_audio"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("v.yaml", "voters:\n  - {name: x, kind: callable\n", r"voters file '.*v.yaml' is not valid YAML: "),
        ("v.json", '{"voters": [{"name": "x", ', r"voters file '.*v.json' is not valid JSON: "),
        (
            "v.yaml",
            "voters:\n  - {name: x, kind: openai, base_url: u, model: m, timeout_s: 30s}\n",
            r"voters file '.*v.yaml': voters.x.timeout_s='30s': expected a finite number > 0",
        ),
        (
            "v.yaml",
            "voters:\n  - {name: x, kind: callable, target: 'm:f', batch_sise: 2}\n",
            r"voters file '.*v.yaml': unknown option\(s\) voters.x.\['batch_sise'\]",
        ),
        ("v.yaml", "voters:\n  - {name: x, kind: remote}\n", r"voters.x.kind='remote': expected one of \('local'"),
    ],
)
def test_voters_file_errors_name_the_file_and_option(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_voter_specs(path)
