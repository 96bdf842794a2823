"""MAPLE-QA+ augmentation: strata, none-answers, substitution rate, determinism, ids, schema, errors, CLI."""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace

import pytest

from verl_modality import vocabulary
from verl_modality.data import augmentation as aug
from verl_modality.data import schema, validate
from verl_modality.data.augmentation import AugmentationError, AugmentConfig, augment_rows, augment_sample
from verl_modality.data.none_answers import NONE_ANSWERS
from verl_modality.data.prompts import PromptConfig
from verl_modality.data.schema import Sample
from verl_modality.vocabulary import LETTERS, TAGS

NONE = set(NONE_ANSWERS)


def make_sources(n: int, seed: int = 0) -> list[Sample]:
    """``n`` exact records over the seven tags, every one with media for V, A and S (paths need not exist)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.choice([2, 3, 4, 5])
        choices = [f"option {i}-{j}" for j in range(k)]
        out.append(
            Sample.create(
                f"src-{i:04d}",
                f"Question number {i}?",
                choices,
                LETTERS[rng.randrange(k)],
                TAGS[i % len(TAGS)],
                videos=[f"media/{i}.mp4"],
                audios=[f"media/{i}.wav"],
                subtitle=f"subtitle line {i}",
                index=i,
                extra={"origin": f"set-{i % 3}"},
            )
        )
    return out


@pytest.fixture(scope="module")
def sources() -> list[Sample]:
    return make_sources(300)


@pytest.fixture(scope="module")
def augmented(sources) -> list[dict]:
    return augment_rows([s.to_row() for s in sources], AugmentConfig(seed=7))


def test_none_answers():
    assert len(NONE_ANSWERS) >= 100
    assert len({p.strip().casefold() for p in NONE_ANSWERS}) == len(NONE_ANSWERS)
    for p in NONE_ANSWERS:
        assert p.strip() == p and p.endswith(".")
        assert not re.search(r"\[\s*[A-Fa-f]\s*\]", p), p
        assert not re.search(r"(?<![A-Za-z])[A-F](?![A-Za-z])", p), p  # no standalone option letter at all


def test_stream_sets():
    assert aug.superset_sets("V", "VAS") == ["VAS", "VA", "VS"]
    assert aug.superset_sets("VA", "VA") == []
    assert aug.deficit_sets("VAS", "VAS") == ["VA", "VS", "AS", "V", "A", "S", ""]
    assert aug.deficit_sets("A", "VAS") == [""]
    assert aug.deficit_sets("A", "VAS", "any") == ["VS", "V", "S", ""]
    assert aug.deficit_sets("VA", "VAS", "any") == ["VS", "AS", "V", "A", "S", ""]


def test_strata_answers_and_ids(sources, augmented):
    by_id = {s.id: s for s in sources}
    assert validate.validate_rows(augmented, check_media=False) == len(augmented)
    ids = [r["id"] for r in augmented]
    assert len(set(ids)) == len(ids)
    assert [r["extra_info"]["index"] for r in augmented] == list(range(len(augmented)))
    seen_sets: dict[str, set[str]] = {}
    for row in augmented:
        info = row["extra_info"]
        src = by_id[info["source_id"]]
        assert row["id"] == f"{src.id}/{row['available'] or 'none'}"
        assert info["stratum"] == row["stratum"] == vocabulary.stratum_of(src.modality_tag, row["available"])
        assert row["modality_tag"] == src.modality_tag and row["answer"] == src.answer
        assert row["origin"] == src.extra["origin"]  # extra columns pass through
        k = LETTERS.index(row["answer"])
        assert k < len(row["choices"])  # the answer is among the choices
        changed = [i for i, (a, b) in enumerate(zip(row["choices"], src.choices, strict=True)) if a != b]
        if row["stratum"] == "deficit":
            assert set(row["available"]) < set(src.modality_tag)
            assert row["choices"][k] in NONE and changed == [k]
            assert (info["none_index"], info["none_replaced"]) == (k, "correct")
        else:
            assert row["choices"][k] == src.choices[k]  # the correct answer text is never lost
            assert changed == ([info["none_index"]] if info["none_index"] >= 0 else [])
            if changed:
                assert changed[0] != k and row["choices"][changed[0]] in NONE and info["none_replaced"] == "incorrect"
        if row["stratum"] == "superset":
            assert set(row["available"]) > set(src.modality_tag)
        seen_sets.setdefault(src.id, set()).add(row["available"])
    # "all": every superset and every strict subset of the tag, plus the exact variant
    for src in sources:
        expected = {
            src.modality_tag,
            *aug.superset_sets(src.modality_tag, "VAS"),
            *aug.deficit_sets(src.modality_tag, "VAS"),
        }
        assert seen_sets[src.id] == expected
        assert len(expected) == 1 + (2 ** (3 - len(src.modality_tag)) - 1) + (2 ** len(src.modality_tag) - 1)


def test_substitution_rate(augmented):
    trials = [r for r in augmented if r["stratum"] != "deficit"]
    hits = sum(r["extra_info"]["none_index"] >= 0 for r in trials)
    n, p = len(trials), 0.25
    assert n > 700
    assert abs(hits - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), (hits, n)
    for stratum in ("exact", "superset"):  # both strata get substitutions
        assert any(r["extra_info"]["none_index"] >= 0 for r in trials if r["stratum"] == stratum)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_rate_bounds(sources, rate):
    rows = augment_rows([s.to_row() for s in sources[:30]], AugmentConfig(rate=rate))
    for row in rows:
        substituted = row["extra_info"]["none_index"] >= 0
        assert substituted == (row["stratum"] == "deficit" or rate == 1.0)


def test_replace_correct(sources):
    rows = augment_rows([s.to_row() for s in sources[:80]], AugmentConfig(seed=1, replace="correct"))
    hit = [r for r in rows if r["stratum"] != "deficit" and r["extra_info"]["none_index"] >= 0]
    assert hit
    for row in rows:
        info = row["extra_info"]
        if info["none_index"] >= 0:
            assert info["none_index"] == LETTERS.index(row["answer"]) and info["none_replaced"] == "correct"
            assert row["choices"][info["none_index"]] in NONE


def test_one_combination(sources):
    rows = augment_rows([s.to_row() for s in sources[:70]], AugmentConfig(seed=2, combinations="one"))
    validate.validate_rows(rows, check_media=False)
    per_source: dict[str, list[str]] = {}
    for row in rows:
        per_source.setdefault(row["extra_info"]["source_id"], []).append(row["stratum"])
    for src in sources[:70]:
        strata = per_source[src.id]
        assert strata.count("exact") == 1 and strata.count("deficit") == 1
        assert strata.count("superset") == (0 if src.modality_tag == "VAS" else 1)
    picked = {r["available"] for r in rows if r["stratum"] == "deficit" and r["modality_tag"] == "VAS"}
    assert len(picked) > 1  # the choice is seeded per sample, not fixed
    # the variant built for a stream set is the same whether all sets or one are emitted
    full = {r["id"]: r for r in augment_rows([s.to_row() for s in sources[:70]], AugmentConfig(seed=2))}
    for row in rows:
        assert row["choices"] == full[row["id"]]["choices"] and row["prompt"] == full[row["id"]]["prompt"]


def test_determinism_and_order_independence(sources, augmented):
    rows = [s.to_row() for s in sources]
    again = augment_rows(rows, AugmentConfig(seed=7))
    assert again == augmented
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)

    def key(rs):
        return {r["id"]: (r["choices"], r["prompt"], r["answer"]) for r in rs}

    assert key(augment_rows(shuffled, AugmentConfig(seed=7))) == key(augmented)
    assert key(augment_rows(rows, AugmentConfig(seed=8))) != key(augmented)


def test_file_roundtrip_demo(demo_data, tmp_path, capsys):
    """The demo set through the CLI: byte-identical output per seed, media paths rebased, output validates."""
    from verl_modality.cli import main

    directory, _ = demo_data
    out1, out2 = tmp_path / "a" / "plus.parquet", tmp_path / "b" / "plus.parquet"
    assert main(["augment-qa", str(directory / "test.parquet"), str(out1), "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "superset" in printed and "none-answer substitutions" in printed and "VAS" in printed
    assert main(["augment-qa", str(directory / "test.parquet"), str(out2), "--seed", "5"]) == 0
    assert out1.read_bytes() == out2.read_bytes()
    n = validate.validate_file(out1)  # media checked: the relative paths were rewritten for the new directory
    summary = aug.summarize(schema.read_rows(out1))
    assert summary["rows"] == n and summary["sources"] == 28
    assert summary["substitutions"]["deficit"]["correct"] == summary["by_stratum"]["deficit"]
    assert sum(summary["by_stratum"].values()) == n
    table = aug.format_summary(summary)
    assert str(summary["by_stratum"]["deficit"]) in table


def test_cli_errors(demo_data, tmp_path, capsys):
    from verl_modality.cli import main

    directory, _ = demo_data
    out = tmp_path / "plus.parquet"
    assert main(["augment-qa", str(directory / "test.parquet"), str(out), "--combinations", "one"]) == 0
    capsys.readouterr()
    assert main(["augment-qa", str(out), str(tmp_path / "again.parquet")]) == 1  # superset/deficit input
    assert "augmentation starts from exact rows only" in capsys.readouterr().err
    assert main(["augment-qa", str(tmp_path / "missing.parquet"), str(out)]) == 1


def test_errors(sources):
    src = sources[0]  # tag V
    with pytest.raises(AugmentationError, match=r"^src-0000: stratum 'superset'"):
        augment_sample(src.with_available("VA"))
    with pytest.raises(AugmentationError, match=r"^src-0000: stratum 'deficit'"):
        augment_rows([src.with_available("").to_row()])
    with pytest.raises(AugmentationError, match=r"^src-0000: task 'caption'"):
        augment_sample(replace(src, task="caption"))
    with pytest.raises(AugmentationError, match=r"^src-0000: answer 'F' is not among the"):
        augment_sample(replace(src, answer="F"))
    with pytest.raises(AugmentationError, match=r"^src-0000: duplicate id"):
        augment_rows([src.to_row(), src.to_row()])
    with pytest.raises(AugmentationError, match=r"^row 0: not a schema row"):
        augment_rows([{"question": "?"}])
    with pytest.raises(ValueError, match=r"augment.combinations='some': expected one of \('all', 'one'\)"):
        AugmentConfig(combinations="some")
    with pytest.raises(ValueError, match="augment.rate=1.5: expected a finite number >= 0 and <= 1"):
        AugmentConfig(rate=1.5)


def test_prompt_config(sources):
    cfg = AugmentConfig(prompt=PromptConfig(style="answer_tag", qa_template="described"))
    rows = augment_rows([s.to_row() for s in sources[:14]], cfg)
    validate.validate_rows(rows, check_media=False)
    for row in rows:
        text = row["prompt"][-1]["content"]
        assert "<answer>B</answer>" in text and "Sources available to you:" in text
        for i, choice in enumerate(row["choices"]):
            assert f"{LETTERS[i]}. {choice}" in text
