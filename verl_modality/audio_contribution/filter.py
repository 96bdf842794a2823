"""Audio-contribution filtering (ACF): split multiple-choice items by whether voters answer them without the audio.

docs/method.md §6. Every audio item of a row is replaced by one silent wav (30 s of zeros at 16 kHz, not a blank of the
original's length); video and subtitles stay as they are. Each voter answers every item under silence; an item that
at least ``min_votes`` voters answer correctly is *weak* audio-contribution, otherwise *strong*. With ``with_audio``
the voters also answer with the real audio, and the report gives the audio contribution per voter and item,
AC = 1[correct with audio] - 1[correct with silence].

Scoring: the correctness of the task reward, :func:`verl_modality.rewards.choice.compute_score`: the option-letter
rule, and MMAU's string-match rule (:func:`verl_modality.rewards.string_match.mmau_string_match`) for rows of MMAU,
MMSU and MMAR (``data_source`` starting with ``mmau``, ``mmsu``, ``mmar``), with option letters in the reply expanded
to their texts.

Resuming: each voter's answers go to ``OUT/answers/<voter>.<silent|audio>.jsonl``, one line per item, written as
they come. A restart reads them back and asks only the missing items; a file recorded under another voter
configuration (or another silence duration) is refused.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verl_modality import options
from verl_modality.audio_contribution.voters import VoterSpec, build_voter, check_unique_names
from verl_modality.data import media, schema, validate
from verl_modality.options import option

CONDITIONS = ("silent", "audio")
WEAK, STRONG = "weak", "strong"
ANSWERS_DIR = "answers"
MEDIA_DIR = "media"


@dataclass(frozen=True)
class ACFConfig:
    """Options of :func:`run_acf`."""

    # an item is weak when >= min_votes voters are right under silence (paper §3.3, 2 of 3)
    min_votes: int = option(2, ge=1, help="voters right under silence that make an item weak")
    # audio replaced by this much silence (paper §3.2: 30 s)
    silence_seconds: float = option(30.0, gt=0, help="length of the silence replacing the audio")
    sample_rate: int = option(media.SAMPLE_RATE, ge=1, help="of the silent wav (16 kHz, the models' input rate)")
    # also ask with the real audio, for AC = 1[audio] - 1[silence] (paper §3.2)
    with_audio: bool = option(False, help="also ask with the real audio and report AC")
    limit: int | None = option(None, ge=1, help="only the first N rows")
    progress: bool = option(True, help="show a progress bar")

    def __post_init__(self) -> None:
        options.validate(self, "acf")


# ---------------------------------------------------------------------------------------------------------------
# silence


def write_silence(directory: str | os.PathLike, seconds: float = 30.0, sample_rate: int = media.SAMPLE_RATE) -> Path:
    """One silent mono wav (float32 zeros) of ``seconds`` at ``sample_rate`` in ``directory``; returns its path."""
    n = int(round(seconds * sample_rate))
    if n < 1:
        raise ValueError(f"{seconds} s at {sample_rate} Hz is not a single sample")
    path = Path(directory) / f"silence_{seconds:g}s_{sample_rate}hz.wav"
    if not path.is_file() or media.probe_audio(path).frames != n:
        media.write_audio(path, np.zeros(n, dtype=np.float32), sr=sample_rate)
    return path.resolve()


def silence_row(row: Mapping[str, Any], silent_path: str | os.PathLike) -> dict[str, Any]:
    """A copy of ``row`` with every audio item (shown ones and the ``media`` record) pointing to ``silent_path``."""
    silent = os.fspath(silent_path)
    out = dict(row)
    out[schema.AUDIOS] = [{**dict(item), "audio": silent} for item in schema.as_list(row.get(schema.AUDIOS))]
    if row.get(schema.MEDIA):
        record = dict(row[schema.MEDIA])
        record["audios"] = [silent for _ in schema.as_list(record.get("audios"))]
        out[schema.MEDIA] = record
    return out


# ---------------------------------------------------------------------------------------------------------------
# scoring


def scoring_rule(data_source: str) -> str:
    """``"string_match"`` for MMAU / MMSU / MMAR sources, ``"letter"`` otherwise (as the reward decides)."""
    from verl_modality.rewards.choice import uses_string_match

    return "string_match" if uses_string_match(data_source) else "letter"


def score_response(row: Mapping[str, Any], response: str) -> bool:
    """Whether ``response`` answers the multiple-choice ``row`` correctly: the task reward's own correctness
    (:func:`verl_modality.rewards.choice.compute_score`, ``acc``), with the row's option texts in ``extra_info``."""
    from verl_modality.rewards.choice import score_row

    return score_row(row, response)["acc"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# answer files


def _row_key(row: Mapping[str, Any]) -> str:
    """Digest of the row's prompt and media counts, to catch changed input data (media paths are left out, so the
    input folder and the output folder may move)."""
    shown = {
        "prompt": [[m["role"], m["content"]] for m in schema.as_list(row[schema.PROMPT])],
        "audios": len(schema.as_list(row.get(schema.AUDIOS))),
        "videos": len(schema.as_list(row.get(schema.VIDEOS))),
    }
    return hashlib.sha1(json.dumps(shown, sort_keys=True).encode()).hexdigest()[:16]


class AnswerStore:
    """One voter's answers under one condition, as a JSONL file: a header line with the voter's configuration,
    then ``{"id", "key", "response"}`` per item, appended and flushed as answers arrive."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = path, header
        self.answers: dict[str, dict[str, Any]] = {}
        if path.exists():
            self._load()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                f.write(json.dumps({"header": header}, sort_keys=True) + "\n")

    def _load(self) -> None:
        from verl_modality.jsonl_log import complete_lines

        complete, _ = complete_lines(self.path)  # a crash can leave one unterminated last line: cut off
        if not complete:
            raise ValueError(f"{self.path}: answer file has no header line; delete it to start this voter afresh")
        first = json.loads(complete[0])
        recorded = first.get("header") if isinstance(first, dict) else None
        if recorded != self.header:
            changed = sorted(
                k
                for k in set(recorded or {}) | set(self.header)
                if (recorded or {}).get(k) != self.header.get(k) and k != "config"
            )
            old, new = (recorded or {}).get("config") or {}, self.header.get("config") or {}
            changed += [f"config.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            raise ValueError(
                f"voter {self.header.get('voter')!r}: {self.path} holds answers recorded under another configuration "
                f"(differs in {', '.join(changed) or 'header'}); give the changed voter a new name, or delete the "
                "file to ask it again from scratch"
            )
        for n, line in enumerate(complete[1:], start=2):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.path}: line {n} is not JSON ({exc})") from exc
            self.answers[record["id"]] = record

    def get(self, row: Mapping[str, Any]) -> str | None:
        record = self.answers.get(row[schema.ID])
        if record is None:
            return None
        if record.get("key") != _row_key(row):
            raise ValueError(
                f"{self.path}: the answer recorded for id {row[schema.ID]!r} was given for another prompt or media "
                "(the input data changed); use a new --out-dir or delete this file"
            )
        return record["response"]

    def add(self, rows: Sequence[Mapping[str, Any]], responses: Sequence[str]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for row, response in zip(rows, responses, strict=True):
                record = {"id": row[schema.ID], "key": _row_key(row), "response": response}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                self.answers[row[schema.ID]] = record
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------------------------
# the run


def _load_rows(data: str | os.PathLike, limit: int | None) -> tuple[list[dict[str, Any]], Path]:
    path = Path(data)
    if not path.is_file():
        raise ValueError(f"data file {os.fspath(path)!r} does not exist")
    rows = schema.read_rows(path)
    if not rows:
        raise ValueError(f"{path}: holds no rows")
    if limit is not None:
        rows = rows[:limit]
    root = path.resolve().parent
    validate.validate_rows(rows, root=root, check_media=False, source=os.fspath(path))
    bad = [r[schema.ID] for r in rows if r[schema.TASK] not in schema.CHOICE_TASKS]
    if bad:
        raise ValueError(
            f"{path}: audio-contribution filtering needs multiple-choice rows; {len(bad)} row(s) have another task "
            f"(first ids: {', '.join(bad[:5])})"
        )
    from verl_modality.data.dataset import resolve_media_paths

    return [resolve_media_paths(r, root) for r in rows], root


def run_acf(
    data: str | os.PathLike, voters: Sequence[VoterSpec], out_dir: str | os.PathLike, config: ACFConfig | None = None
) -> dict[str, Any]:
    """Ask every voter about every row of ``data`` under silence (and with the audio when ``config.with_audio``),
    split the rows into ``OUT/weak.parquet`` / ``OUT/strong.parquet`` (all of them, with the votes, in
    ``OUT/all.parquet``) and write ``OUT/report.json``; returns the report. Media paths in the outputs are absolute.
    """
    from tqdm.auto import tqdm

    config = config or ACFConfig()
    voters = list(voters)
    if not voters:
        raise ValueError("no voters given")
    check_unique_names(voters)
    if config.min_votes > len(voters):
        raise ValueError(
            f"acf.min_votes={config.min_votes} is more than the {len(voters)} voter(s): no item could be weak"
        )
    rows, _ = _load_rows(data, config.limit)  # a bad data file fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    silent_path = write_silence(out / MEDIA_DIR, config.silence_seconds, config.sample_rate)
    inputs = {"silent": [silence_row(r, silent_path) for r in rows]}
    if config.with_audio:
        inputs["audio"] = rows
    silence = {"silence_seconds": config.silence_seconds, "sample_rate": config.sample_rate}

    stores: dict[tuple[str, str], AnswerStore] = {}
    todo: dict[tuple[str, str], list[dict]] = {}
    for spec in voters:
        for cond, cond_rows in inputs.items():
            header = {"voter": spec.name, "condition": cond, "config": spec.fingerprint()}
            if cond == "silent":
                header.update(silence)
            store = stores[spec.name, cond] = AnswerStore(out / ANSWERS_DIR / f"{spec.name}.{cond}.jsonl", header)
            todo[spec.name, cond] = [r for r in cond_rows if store.get(r) is None]

    total = sum(len(v) for v in todo.values())
    with tqdm(total=total, desc="acf answers", unit="answer", disable=not config.progress) as bar:
        for spec in voters:
            voter = None
            for cond in inputs:
                pending = todo[spec.name, cond]
                if not pending:
                    continue
                bar.set_postfix_str(f"{spec.name} ({cond})")
                if voter is None:
                    voter = build_voter(spec)
                step = spec.rows_per_call
                for start in range(0, len(pending), step):
                    batch = pending[start : start + step]
                    stores[spec.name, cond].add(batch, voter.answer(batch))
                    bar.update(len(batch))
            del voter
            gc.collect()

    return _finish(rows, inputs, voters, stores, out, config, Path(data), silent_path)


def _finish(
    rows: list[dict],
    inputs: dict[str, list[dict]],
    voters: Sequence[VoterSpec],
    stores: dict[tuple[str, str], AnswerStore],
    out: Path,
    config: ACFConfig,
    data: Path,
    silent_path: Path,
) -> dict[str, Any]:
    import pyarrow.parquet as pq

    names = [v.name for v in voters]
    correct = {
        cond: {n: [score_response(r, stores[n, cond].get(r)) for r in cond_rows] for n in names}
        for cond, cond_rows in inputs.items()
    }
    labelled = []
    splits = []
    for i, row in enumerate(rows):
        silent = {n: bool(correct["silent"][n][i]) for n in names}
        votes = sum(silent.values())
        split = WEAK if votes >= config.min_votes else STRONG
        info = dict(row[schema.EXTRA_INFO])
        info.update(silent_votes=int(votes), silent_correct=silent, acf_split=split)
        if config.with_audio:
            heard = {n: bool(correct["audio"][n][i]) for n in names}
            info.update(audio_correct=heard, ac={n: int(heard[n]) - int(silent[n]) for n in names})
        labelled.append({**row, schema.EXTRA_INFO: info})
        splits.append(split)

    all_path = schema.write_rows(labelled, out / "all.parquet")
    table = pq.read_table(all_path)
    mask = np.array([s == WEAK for s in splits])
    for split, keep in ((WEAK, mask), (STRONG, ~mask)):
        pq.write_table(table.filter(keep), out / f"{split}.parquet")

    report = _report(rows, splits, correct, names, config)
    report.update(
        data=os.fspath(data),
        out_dir=os.fspath(out),
        silent_wav=os.fspath(silent_path),
        files={k: os.fspath(out / f"{k}.parquet") for k in ("weak", "strong", "all")},
    )
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return report


def _report(
    rows: list[dict], splits: list[str], correct: dict[str, dict[str, list[bool]]], names: list[str], config: ACFConfig
) -> dict[str, Any]:
    n = len(rows)
    per_source: dict[str, dict[str, Any]] = {}
    for row, split in zip(rows, splits, strict=True):
        entry = per_source.setdefault(row[schema.DATA_SOURCE], {"items": 0, WEAK: 0, STRONG: 0})
        entry["items"] += 1
        entry[split] += 1
    for entry in per_source.values():
        entry["weak_fraction"] = entry[WEAK] / entry["items"]
    votes = Counter(sum(correct["silent"][v][i] for v in names) for i in range(n))
    per_voter: dict[str, dict[str, Any]] = {}
    for v in names:
        s = np.asarray(correct["silent"][v], dtype=float)
        entry: dict[str, Any] = {"silent_accuracy": float(s.mean())}
        if config.with_audio:
            a = np.asarray(correct["audio"][v], dtype=float)
            ac = a - s
            entry.update(
                audio_accuracy=float(a.mean()),
                mean_ac=float(ac.mean()),
                ac_positive=int((ac > 0).sum()),
                ac_zero=int((ac == 0).sum()),
                ac_negative=int((ac < 0).sum()),
            )
        per_voter[v] = entry
    report: dict[str, Any] = {
        "items": n,
        "voters": names,
        "min_votes": config.min_votes,
        "silence_seconds": config.silence_seconds,
        "sample_rate": config.sample_rate,
        "weak": splits.count(WEAK),
        "strong": splits.count(STRONG),
        "weak_fraction": splits.count(WEAK) / n,
        "vote_counts": {str(k): int(votes.get(k, 0)) for k in range(len(names) + 1)},
        "per_source": dict(sorted(per_source.items())),
        "scoring": {src: scoring_rule(src) for src in sorted(per_source)},
        "rows_without_audio": sum(1 for r in rows if not schema.as_list(r.get(schema.AUDIOS))),
        "per_voter": per_voter,
        "with_audio": config.with_audio,
    }
    if config.with_audio:
        acs = np.array([[correct["audio"][v][i] - correct["silent"][v][i] for v in names] for i in range(n)], float)
        report["ac"] = {
            "computed": True,
            "mean_ac": float(acs.mean()),
            "items_zero_ac_all_voters": int((acs == 0).all(axis=1).sum()),
        }
    else:
        report["ac"] = {
            "computed": False,
            "note": "answers with the real audio were not requested (--with-audio): only the silent side is reported",
        }
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The report as plain-text tables: per source, then per voter."""
    lines = [
        f"{report['items']} items, {len(report['voters'])} voters, weak = at least {report['min_votes']} right "
        f"under {report['silence_seconds']:g} s of silence: weak {report['weak']}, strong {report['strong']}",
        "",
        f"{'source':>24}  {'items':>6}  {'weak':>6}  {'strong':>6}  {'weak %':>6}  scoring",
    ]
    for src, e in report["per_source"].items():
        lines.append(
            f"{src:>24}  {e['items']:>6}  {e['weak']:>6}  {e['strong']:>6}  {100 * e['weak_fraction']:>6.1f}  "
            f"{report['scoring'][src]}"
        )
    lines.append("")
    head = f"{'voter':>24}  {'silent acc':>10}"
    if report["with_audio"]:
        head += f"  {'audio acc':>9}  {'mean AC':>7}  {'AC=+1':>5}  {'AC=0':>5}  {'AC=-1':>5}"
    lines.append(head)
    for v, e in report["per_voter"].items():
        line = f"{v:>24}  {e['silent_accuracy']:>10.3f}"
        if report["with_audio"]:
            line += (
                f"  {e['audio_accuracy']:>9.3f}  {e['mean_ac']:>+7.3f}  {e['ac_positive']:>5}  {e['ac_zero']:>5}  "
                f"{e['ac_negative']:>5}"
            )
        lines.append(line)
    votes = ", ".join(f"{k}: {v}" for k, v in report["vote_counts"].items())
    lines += ["", f"items by number of voters right under silence: {votes}"]
    if report["rows_without_audio"]:
        lines.append(f"note: {report['rows_without_audio']} item(s) show no audio, so silence changes nothing for them")
    if not report["ac"]["computed"]:
        lines.append(f"AC not computed: {report['ac']['note']}")
    return "\n".join(lines)
