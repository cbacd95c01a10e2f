"""Counterfactual values: same kind, consistent across accepted strings, never a value the documents hold."""

from __future__ import annotations

import random
import re

import pytest

from engine.generation.chat import NOT_IN_SOURCES, is_abstention
from engine.questions.edits import SKIP_AMBIGUOUS, SKIP_NOT_FOUND, Corpus, ValueEdit, occurs, plan_edits, replacement
from engine.questions.qa import BUNDLED_SET, load_questions

QUESTIONS = load_questions(BUNDLED_SET / "qa.jsonl")
CORPUS = Corpus(BUNDLED_SET / "docs")


def _never(_: str) -> bool:
    return False


@pytest.mark.parametrize("seed", range(20))
def test_a_value_keeps_its_kind(seed):
    rng = random.Random(seed)
    year = replacement(("2014",), rng, _never)
    assert year and re.fullmatch(r"\d{4}", year[0]) and abs(int(year[0]) - 2014) <= 12 and year[0] != "2014"
    price = replacement(("€59.90", "59.90"), rng, _never)
    assert price and re.fullmatch(r"€\d\d\.\d\d", price[0]) and price[1] == price[0][1:], "one mapping for both"
    hours = replacement(("08:00 to 18:00",), rng, _never)
    assert hours and all(int(h) < 24 and m in ("00", "15", "30", "45")
                         for h, m in re.findall(r"(\d\d):(\d\d)", hours[0]))
    code = replacement(("E-407",), rng, _never)
    assert code and re.fullmatch(r"E-\d{3}", code[0]) and code[0] != "E-407"
    letters = replacement(("FW-R",), rng, _never)
    assert letters and re.fullmatch(r"FW-[A-Z]", letters[0]) and letters[0] != "FW-R"
    name = replacement(("Oona Lindqvist", "Lindqvist"), rng, _never)
    assert name and name[0].endswith(" " + name[1]) and name[1][0].isupper() and "Lindqvist" not in name[0]
    thousands = replacement(("3,000 cycles",), rng, _never)
    assert thousands and re.fullmatch(r"\d,000 cycles", thousands[0]), "the zeros are the scale"


def test_a_replacement_the_documents_hold_is_drawn_again():
    seen: list[str] = []

    def taken(value: str) -> bool:
        seen.append(value)
        return len(seen) < 4
    new = replacement(("2014",), random.Random(0), taken)
    assert new == (seen[-1],) and len(seen) == 4
    assert replacement(("2014",), random.Random(0), lambda _: True) is None, "gives up instead of using a taken one"
    assert replacement(("cheerful",), random.Random(0), _never) is None, "no kind to keep: none"


def test_the_edited_set_of_the_bundled_documents():
    facts = {q.fact_id: q for q in QUESTIONS if q.split != "unseen"}
    edits, skipped = plan_edits([(q.fact_id, q.source, q.answers) for q in facts.values()], CORPUS, seed="t")
    assert len(edits) > 0.6 * len(facts) and skipped[SKIP_AMBIGUOUS] > 0
    assert sum(skipped.values()) + len(edits) == len(facts), "every fact is edited or counted"
    for edit in edits:
        assert not CORPUS.taken(edit.new[0]), f"{edit.new[0]!r} occurs in a document"
        assert CORPUS.holding(edit.old[0]) and {h.split("/")[1] for h in CORPUS.holding(edit.old[0])} == \
            {edit.source.split("/")[1]}, "only facts whose answer one document holds"
        text = edit.apply(CORPUS.texts[edit.source])
        assert occurs(edit.new[0], text) and not any(occurs(old, text) for old in edit.old), edit
    again, _ = plan_edits([(q.fact_id, q.source, q.answers) for q in facts.values()], CORPUS, seed="t")
    assert again == edits, "the same seed, the same set"


def test_a_fact_whose_answer_two_documents_hold_is_skipped_and_counted():
    founded = next(q for q in QUESTIONS if q.fact_id == "F001")  # 2014: one document says it
    facts = [("X1", founded.source, founded.answers),
             ("X2", "docs/shipping-policy.md", ("2 business days",)),  # the support policy says it too
             ("X3", "docs/shipping-policy.md", ("nowhere at all",))]
    edits, skipped = plan_edits(facts, CORPUS, seed="t")
    assert [e.fact_id for e in edits] == ["X1"]
    assert skipped == {SKIP_AMBIGUOUS: 1, SKIP_NOT_FOUND: 1}


def test_apply_replaces_whole_values_only():
    edit = ValueEdit("F", "docs/x.md", ("€59", "59"), ("€47", "47"))
    assert edit.apply("costs €59, item 1590, 59 units") == "costs €47, item 1590, 47 units"


def test_an_abstention_is_recognised_and_a_value_is_not():
    assert is_abstention(NOT_IN_SOURCES) and is_abstention("I don’t know.")
    assert is_abstention("The sources do not contain the price.")
    assert not is_abstention("The Brookling B5 costs €329 [1].")
