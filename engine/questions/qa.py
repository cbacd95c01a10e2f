"""The question set of a knowledge collection (``qa.jsonl``) and how answers are graded.

Each line is one question: ``id``, ``fact_id``, ``split`` ("train" questions may be
used for fine-tuning, "heldout" ones never, "unseen" ones are about documents that
fine-tuning never sees either: ``set.json``'s "unseen_documents"), ``question``, ``answers`` (accepted
strings), ``source`` (the document holding the fact), and for facts that a later
version of a document changes, ``answers_after_update`` and ``update_source``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from engine.answer.render import Shown, shown_content
from engine.errors import InputError
from engine.text import split_sentences

if TYPE_CHECKING:  # the knowledge base loads native parts; only its types are named here
    from engine.kb import Hit, KnowledgeBase

BUNDLED_SET = Path(__file__).parent.parent / "data" / "kb"  # engine/data/kb

#: Values of ``Question.split``.
SPLITS = ("train", "heldout", "unseen")


@dataclass(frozen=True)
class Question:
    """One question of the set, with the answers that count as correct."""

    id: str
    fact_id: str
    split: str
    question: str
    answers: tuple[str, ...]
    source: str
    answers_after_update: tuple[str, ...] = ()
    update_source: str | None = None

    @property
    def changes_on_update(self) -> bool:
        """True when a v2 document changes this question's answer."""
        return bool(self.answers_after_update)


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read a ``qa.jsonl`` file.

    Raises:
        InputError: missing file, a line that is not JSON, or a line missing a field.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"no question file at '{file}': give the path of a qa.jsonl")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{file} is not UTF-8 text ({error.reason} at byte {error.start}): "
                         "give a qa.jsonl, one JSON object per line") from None
    questions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            questions.append(Question(
                id=row["id"], fact_id=row["fact_id"], split=row["split"], question=row["question"],
                answers=_strings(row["answers"]), source=row["source"],
                answers_after_update=_strings(row.get("answers_after_update") or []),
                update_source=row.get("update_source"),
            ))
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{file}:{number} is not a valid question line ({error}): "
                             "see engine/data/kb/README.md for the fields") from None
        if not questions[-1].answers or questions[-1].split not in SPLITS:
            raise InputError(f"{file}:{number}: needs a non-empty 'answers' and split 'train', 'heldout' or 'unseen'")
    if not questions:
        raise InputError(f"{file} holds no questions")
    return questions


def _strings(value: object) -> tuple[str, ...]:
    """A list of accepted answers as a tuple (a bare string would count each of its characters)."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"answers must be a list of strings, got {value!r}")
    return tuple(value)


def _set_json(folder: str | os.PathLike[str]) -> dict | None:
    """A knowledge set's ``set.json`` as a dict, None when the folder has none."""
    file = Path(folder) / "set.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{file} is not valid JSON ({error}): see engine/data/kb/README.md") from None
    if not isinstance(data, dict):
        raise InputError(f"{file} must hold a JSON object: see engine/data/kb/README.md")
    return data


def set_subject(folder: str | os.PathLike[str]) -> str | None:
    """What a knowledge set is about (its ``set.json`` "subject"), named in the baked
    system prompt; None when the folder has no ``set.json``.

    Raises:
        InputError: ``set.json`` is not a JSON object with a string "subject".
    """
    data = _set_json(folder)
    if data is None:
        return None
    subject = data.get("subject")
    if not isinstance(subject, str) or not subject.strip():
        raise InputError(f"{Path(folder) / 'set.json'}: 'subject' must be a non-empty string")
    return subject.strip()


def unseen_documents(folder: str | os.PathLike[str]) -> frozenset[str]:
    """File names of the documents fine-tuning must never see (``set.json`` "unseen_documents",
    paths like "docs/x.md"); empty when the set names none.

    Raises:
        InputError: "unseen_documents" is not a list of strings.
    """
    data = _set_json(folder) or {}
    names = data.get("unseen_documents", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise InputError(f"{Path(folder) / 'set.json'}: 'unseen_documents' must be a list of document paths")
    return frozenset(Path(n).name for n in names)


def unseen_questions(questions: list[Question], limit: int | None = None) -> list[Question]:
    """The "unseen" split's questions (documents fine-tuning never saw): all, or the first
    ``limit`` facts' spread over their documents (round-robin, as ``select_facts`` spreads)."""
    unseen = [q for q in questions if q.split == "unseen"]
    if limit is None:
        return unseen
    by_source: dict[str, list[Question]] = {}
    for q in unseen:
        by_source.setdefault(q.source, []).append(q)
    return round_robin(list(by_source.values()), limit)


_T = TypeVar("_T")


def round_robin(queues: Sequence[Sequence[_T]], limit: int) -> list[_T]:
    """The first ``limit`` items taking one from each queue in turn (the first of every queue,
    then the second of every queue, ...), skipping queues that ran out."""
    longest = max((len(queue) for queue in queues), default=0)
    taken = [queue[turn] for turn in range(longest) for queue in queues if turn < len(queue)]
    return taken[:limit]


def is_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    """An answer is correct when it contains one of the accepted strings (case-insensitive)."""
    folded = answer.casefold()
    return any(candidate.casefold() in folded for candidate in accepted)


# The other two grading rules, as SQuAD defines them: answers and accepted strings are
# compared after case folding, removing punctuation and articles, collapsing spaces.
_LABELS = re.compile(r"\[\d{1,6}\]")
_PUNCTUATION = re.compile(r"[^\w\s]")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize(text: str) -> str:
    """Case-folded, without passage labels, punctuation or articles, single-spaced (SQuAD's normalisation)."""
    text = _PUNCTUATION.sub(" ", _LABELS.sub(" ", text).casefold())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, accepted: tuple[str, ...]) -> bool:
    """The normalised answer is exactly one of the normalised accepted strings."""
    said = normalize(answer)
    return any(said == normalize(candidate) for candidate in accepted)


def token_f1(answer: str, accepted: tuple[str, ...]) -> float:
    """The best token F1 (harmonic mean of token precision and recall) against any accepted string, in [0, 1]."""
    said = normalize(answer).split()
    best = 0.0
    for candidate in accepted:
        wanted = normalize(candidate).split()
        common = sum(min(said.count(t), wanted.count(t)) for t in set(wanted))
        if common:
            precision, recall = common / len(said), common / len(wanted)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def is_one_sentence(answer: str) -> bool:
    """The answer is a single sentence (the format the fine-tune and the RAG prompt ask for)."""
    return len(split_sentences(answer.strip())) == 1


def select_facts(questions: list[Question], limit_facts: int | None, *, spread: bool = False) -> list[Question]:
    """Keep the questions of ``limit_facts`` facts (all of them when None).

    Args:
        questions: the question set, in file order.
        limit_facts: how many facts to keep; None keeps every question.
        spread: False keeps the first facts in file order. True spreads them over the
            documents: one fact per source document in turn (round-robin, documents in
            file order), facts that a v2 update changes first within each document, so
            a small subset still covers every document, both splits and the update.

    Questions of the "unseen" split are never kept: they are graded on their own
    (``unseen_questions``).
    """
    if limit_facts is None:
        return [q for q in questions if q.split != "unseen"]
    by_source: dict[str, list[str]] = {}
    changes: set[str] = set()
    for q in questions:
        if q.split == "unseen":
            continue
        facts = by_source.setdefault(q.source if spread else "", [])
        if q.fact_id not in facts:
            facts.append(q.fact_id)
        if q.changes_on_update:
            changes.add(q.fact_id)
    if spread:
        for facts in by_source.values():
            facts.sort(key=lambda fact: fact not in changes)  # stable: file order within each group
    kept = set(round_robin(list(by_source.values()), limit_facts))
    return [q for q in questions if q.fact_id in kept]


def holds_answer(passage: Shown, accepted: tuple[str, ...]) -> bool:
    """The passage, as the prompt shows it (:func:`engine.answer.render.shown_content`), contains an accepted string."""
    return is_correct(shown_content(passage.heading, passage.text), accepted)


def first_answer_passage(hits: Sequence[Hit], q: Question) -> Hit | None:
    """The first of ``hits`` that comes from ``q``'s source document and holds an accepted answer, or None."""
    name = Path(q.source).name
    return next((hit for hit in hits if Path(hit.source).name == name and holds_answer(hit, q.answers)), None)


def answer_passage(kb: KnowledgeBase, q: Question) -> Hit | None:
    """The best-ranked chunk of ``q``'s source document that holds an accepted answer, or None."""
    return first_answer_passage(kb.search(q.question, k=1_000_000, mmr_lambda=1.0).hits, q)
