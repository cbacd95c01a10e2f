"""Integrity checks for the bundled knowledge set (engine/data/kb).

The set is data, not code: these tests make sure every question can be answered from
the document it names, that held-out questions are really held out, and that the
"update" documents change exactly the facts that say they change.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

KB = Path(__file__).resolve().parents[1] / "engine" / "data" / "kb"
DOCS = KB / "docs"
UPDATES = KB / "updates"
QA = KB / "qa.jsonl"

REQUIRED_FIELDS = {"id", "fact_id", "split", "question", "answers", "source"}
ID_RE = re.compile(r"^(F\d{3,})-(t\d+|h\d+)$")


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def _norm(question: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", question.lower()))


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    out = []
    for n, line in enumerate(_text(QA).splitlines(), start=1):
        if line.strip():
            row = json.loads(line)
            assert isinstance(row, dict), f"qa.jsonl line {n} is not an object"
            out.append(row)
    return out


@pytest.fixture(scope="module")
def facts(rows) -> dict[str, list[dict]]:
    by_fact: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_fact[row["fact_id"]].append(row)
    return dict(by_fact)


def test_every_file_is_utf8():
    files = [p for p in KB.rglob("*") if p.is_file()]
    assert files
    for path in files:
        _text(path)  # raises UnicodeDecodeError if not UTF-8


def test_docs_count_and_shape():
    docs = sorted(DOCS.glob("*.md"))
    assert len(docs) >= 25
    for doc in [*docs, *UPDATES.glob("*.md")]:
        text = _text(doc)
        words = len(text.split())
        assert 150 <= words <= 600, f"{doc.name}: {words} words"
        assert re.search(r"^# \S", text, re.M), f"{doc.name}: no top-level heading"
        assert re.search(r"^## \S", text, re.M), f"{doc.name}: no section heading"


def test_rows_well_formed(rows):
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate question ids"
    for row in rows:
        assert REQUIRED_FIELDS <= row.keys(), row["id"]
        match = ID_RE.match(row["id"])
        assert match and match.group(1) == row["fact_id"], row["id"]
        expected_split = "train" if match.group(2).startswith("t") else "heldout"
        assert row["split"] == expected_split, row["id"]
        assert row["question"].strip(), row["id"]
        assert row["answers"] and all(isinstance(a, str) for a in row["answers"]), row["id"]
        for answer in row["answers"] + row.get("answers_after_update", []):
            assert len(answer.strip()) >= 2, f"{row['id']}: answer {answer!r} too short"
        assert ("answers_after_update" in row) == ("update_source" in row), row["id"]


def test_fact_count_and_splits(facts):
    assert len(facts) >= 80
    for fid, qs in facts.items():
        train = [q for q in qs if q["split"] == "train"]
        held = [q for q in qs if q["split"] == "heldout"]
        assert len(train) >= 3, fid
        assert len(held) >= 1, fid
        assert len({_norm(q["question"]) for q in train}) == len(train), f"{fid}: repeated train question"
        train_texts = {_norm(q["question"]) for q in train}
        for q in held:
            assert _norm(q["question"]) not in train_texts, f"{q['id']} repeats a train question"


def test_fact_rows_consistent(facts):
    keys = ("answers", "source", "answers_after_update", "update_source")
    for fid, qs in facts.items():
        for key in keys:
            values = {json.dumps(q.get(key)) for q in qs}
            assert len(values) == 1, f"{fid}: questions disagree on {key}"


def test_answers_appear_in_source(rows):
    for row in rows:
        source = KB / row["source"]
        assert source.parent == DOCS and source.is_file(), f"{row['id']}: bad source {row['source']}"
        text = _text(source).lower()
        for answer in row["answers"]:
            assert answer.lower() in text, f"{row['id']}: {answer!r} not in {row['source']}"


def test_update_docs_replace_existing_docs():
    updates = sorted(UPDATES.glob("*.md"))
    assert len(updates) >= 5
    for upd in updates:
        old = DOCS / upd.name
        assert old.is_file(), f"{upd.name} replaces no document in docs/"
        assert _text(old) != _text(upd), f"{upd.name} is identical to the old version"


def test_changed_facts(facts):
    changed = {fid: qs[0] for fid, qs in facts.items() if "update_source" in qs[0]}
    assert len(changed) >= 8
    touched = set()
    for fid, row in changed.items():
        upd = KB / row["update_source"]
        assert upd.parent == UPDATES and upd.is_file(), f"{fid}: bad update_source"
        old = KB / row["source"]
        assert old.name == upd.name, f"{fid}: update doc must replace the fact's source doc"
        old_text, new_text = _text(old).lower(), _text(upd).lower()
        for answer in row["answers_after_update"]:
            assert answer.lower() in new_text, f"{fid}: new answer {answer!r} not in {upd.name}"
            assert answer.lower() not in old_text, f"{fid}: new answer {answer!r} already in old doc"
        for answer in row["answers"]:
            assert answer.lower() not in new_text, f"{fid}: old answer {answer!r} still in {upd.name}"
        touched.add(upd.name)
    assert len(touched) >= 5
    updates = {p.name for p in UPDATES.glob("*.md")}
    assert touched == updates, f"update docs with no changed fact: {updates - touched}"


def test_unchanged_facts_survive_update(facts):
    """A fact whose document is replaced, but which did not change, keeps its answer."""
    updates = {p.name for p in UPDATES.glob("*.md")}
    for fid, qs in facts.items():
        row = qs[0]
        name = Path(row["source"]).name
        if name in updates and "update_source" not in row:
            text = _text(UPDATES / name).lower()
            for answer in row["answers"]:
                assert answer.lower() in text, f"{fid}: {answer!r} lost in updates/{name}"
