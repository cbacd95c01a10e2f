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

KB = Path(__file__).resolve().parents[2] / "engine" / "data" / "kb"
DOCS = KB / "docs"
UPDATES = KB / "updates"
QA = KB / "qa.jsonl"
SET_JSON = KB / "set.json"

REQUIRED_FIELDS = {"id", "fact_id", "split", "question", "answers", "source"}
ID_RE = re.compile(r"^(F\d{3,})-(t\d+|h\d+|u\d+)$")
SPLIT_OF_ID = {"t": "train", "h": "heldout", "u": "unseen"}


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


@pytest.fixture(scope="module")
def unseen_docs() -> list[str]:
    """set.json's "unseen_documents": documents added after fine-tuning ("docs/<file>.md")."""
    data = json.loads(_text(SET_JSON))
    assert isinstance(data, dict) and isinstance(data.get("subject"), str), "set.json needs a string 'subject'"
    names = data.get("unseen_documents")
    assert isinstance(names, list) and all(isinstance(n, str) for n in names), "'unseen_documents' must be a list"
    return names


def _unseen_facts(facts) -> dict[str, dict]:
    return {fid: qs[0] for fid, qs in facts.items() if qs[0]["split"] == "unseen"}


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
        expected_split = SPLIT_OF_ID[match.group(2)[0]]
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
        unseen = [q for q in qs if q["split"] == "unseen"]
        if unseen:  # a fact of a document added after fine-tuning: no train or held-out wording at all
            assert len(unseen) == len(qs), f"{fid}: unseen fact with train/heldout questions"
            assert len({_norm(q["question"]) for q in unseen}) == len(unseen), f"{fid}: repeated unseen question"
            continue
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


def test_unseen_documents_listed(unseen_docs):
    """set.json names at least 5 documents of docs/ as "unseen" (never used for fine-tuning)."""
    assert len(unseen_docs) >= 5
    assert len(set(unseen_docs)) == len(unseen_docs), "unseen_documents lists a document twice"
    for name in unseen_docs:
        path = KB / name
        assert path.parent == DOCS and path.suffix == ".md" and path.is_file(), f"bad unseen document {name}"


def test_unseen_split_matches_unseen_documents(facts, unseen_docs):
    """Unseen facts come from unseen documents, and train/held-out facts never do."""
    unseen = set(unseen_docs)
    for fid, qs in facts.items():
        row = qs[0]
        if row["split"] == "unseen":
            assert row["source"] in unseen, f"{fid}: unseen fact from {row['source']}, not an unseen document"
            assert "update_source" not in row, f"{fid}: an unseen fact cannot change on update"
        else:
            assert row["source"] not in unseen, f"{fid}: {row['split']} fact from unseen document {row['source']}"


def test_unseen_fact_counts(facts, unseen_docs):
    unseen = _unseen_facts(facts)
    assert len(unseen) >= 35
    per_doc: dict[str, int] = defaultdict(int)
    for row in unseen.values():
        per_doc[row["source"]] += 1
    for name in unseen_docs:
        assert per_doc[name] >= 7, f"{name} holds {per_doc[name]} facts (want >= 7)"


def test_split_sizes(rows):
    """Enough questions to grade each split: >= 100 unseen, and >= 100 over >= 30 facts that change on update."""
    unseen = [row for row in rows if row["split"] == "unseen"]
    assert len(unseen) >= 100, f"unseen split holds {len(unseen)} questions (want >= 100)"
    changed = [row for row in rows if "update_source" in row]
    assert len({row["fact_id"] for row in changed}) >= 30, "want >= 30 facts that change on update"
    assert len(changed) >= 100, f"changed facts hold {len(changed)} questions (want >= 100)"


def test_unseen_wordings_ordered(rows):
    """Every unseen fact's -u1 precedes any -u2 (and so on): a limited round-robin takes distinct facts first."""
    numbers = [int(row["id"].rsplit("-u", 1)[1]) for row in rows if row["split"] == "unseen"]
    assert numbers == sorted(numbers), "unseen rows must be ordered by wording number (-u1 rows, then -u2, ...)"


def test_unseen_answers_only_in_their_document(facts):
    """Only the new document can answer an unseen question: no other document (old or update) holds its answer."""
    others = {path: _text(path).lower() for path in [*DOCS.glob("*.md"), *UPDATES.glob("*.md")]}
    for fid, row in _unseen_facts(facts).items():
        source = KB / row["source"]
        for answer in row["answers"]:
            holders = [p.relative_to(KB).as_posix() for p, text in others.items()
                       if p != source and answer.lower() in text]
            assert not holders, f"{fid}: answer {answer!r} also occurs in {holders}"


def test_no_update_replaces_an_unseen_document(unseen_docs):
    updates = {p.name for p in UPDATES.glob("*.md")}
    for name in unseen_docs:
        assert Path(name).name not in updates, f"updates/ replaces unseen document {name}"
