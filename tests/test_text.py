"""The one sentence splitter: what chunking and sentence selection cut text into."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.text import split_sentences, split_units, trimmed_spans

BUNDLED_DOCS = sorted((Path(__file__).resolve().parent.parent / "engine" / "data" / "kb" / "docs").glob("*.*"))


def _texts(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[a:b] for a, b in spans]


def test_numbers_prices_and_abbreviations_do_not_end_a_sentence():
    text = ("Factory firmware: version 2.3.1 is shipped. It costs €39.90! Really?\n"
            "- Weight: 2.9 kg (e.g., the B3)")
    assert _texts(text, split_sentences(text)) == [
        "Factory firmware: version 2.3.1 is shipped.", "It costs €39.90!", "Really?", "- Weight: 2.9 kg (e.g., the B3)"]


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    text = 'The motto is "Every drop where it is needed." (See page 4.) Next one?" he asked.'
    expected = ['The motto is "Every drop where it is needed."', "(See page 4.)", 'Next one?"', "he asked."]
    assert _texts(text, split_sentences(text)) == expected
    # Units (chunk boundaries) end before the closers, as every built KB's chunks do.
    assert _texts(text, split_units(text)) == [
        'The motto is "Every drop where it is needed.', "(See page 4.", 'Next one?', "he asked."]


def test_units_keep_a_wrapped_paragraph_whole_but_sentences_break_at_lines():
    text = ("Place the pump on a level\nsurface before use. Pair it.\n\nSecond paragraph\n"
            "- first item\n* second item\n3) third item")
    assert _texts(text, split_units(text)) == [
        "Place the pump on a level\nsurface before use.", "Pair it.", "Second paragraph",
        "- first item", "* second item", "3) third item"]
    assert _texts(text, split_sentences(text)) == [
        "Place the pump on a level", "surface before use.", "Pair it.", "Second paragraph",
        "- first item", "* second item", "3) third item"]


@pytest.mark.parametrize("text", ["", "   \n\t ", "\n\n\n"])
def test_blank_text_has_no_spans(text: str):
    assert split_units(text) == [] and split_sentences(text) == []


def test_trimmed_spans_drop_surrounding_white_space_and_empty_spans():
    text = "  a b \n\n   \t c"
    assert trimmed_spans(text, [(0, 6), (6, 11), (11, len(text))]) == [(2, 5), (len(text) - 1, len(text))]


@pytest.mark.parametrize("path", BUNDLED_DOCS, ids=lambda p: p.name)
def test_on_the_bundled_documents_no_text_is_lost_and_sentences_nest_in_units(path: Path):
    text = path.read_text(encoding="utf-8")
    units, sentences = split_units(text), split_sentences(text)
    for spans in (units, sentences):
        assert spans == sorted(spans) and all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:]))
    kept = "".join(text[a:b] for a, b in sentences)
    assert "".join(kept.split()) == "".join(text.split()), "only white space may fall between sentences"
    # Between units, only white space and the closers after a full stop (see split_units).
    gaps = "".join(text[b:c] for (_, b), (c, _) in zip(units, units[1:]))
    assert set("".join(gaps.split())) <= set("\"')]")
    # Every break between units is also a break between sentences: a sentence that
    # sentence selection ranks never straddles two of the units chunks are made of.
    unit_of = iter(units)
    unit = next(unit_of)
    for a, b in sentences:
        while a >= unit[1]:
            unit = next(unit_of)
        b = len(text[a:b].rstrip("\"')]")) + a  # a sentence keeps the closers its unit ends before
        assert unit[0] <= a and b <= unit[1], f"{text[a:b]!r} crosses a unit boundary"


def test_the_bundled_documents_are_there():
    assert len(BUNDLED_DOCS) >= 20
