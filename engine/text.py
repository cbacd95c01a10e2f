"""Where text breaks: the one sentence splitter, shared by chunking and sentence selection.

A sentence ends at ``.``, ``!`` or ``?`` (a run of them, then any closing quotes or
brackets) followed by white space, so "2.3.1", "€39.90" and
"e.g.," inside a sentence do not end it (the "2." of a numbered list item does).
Both splitters below cut at that same sentence end, and every other break of
``split_units`` is also a line break, so a sentence that ``engine.kb.scoring`` ranks
never straddles two of the units ``engine.kb.chunking`` packs into chunks. They
differ only in what else breaks:

* ``split_units`` (chunking): also blank lines and line breaks before list items; a
  single line break inside a paragraph does not break (wrapped text stays one unit).
* ``split_sentences`` (sentence selection): also every line break, so list items,
  headings and table rows are sentences of their own.

Spans are ``(start, end)`` character offsets into the text, trimmed of surrounding
white space, in reading order; empty ones are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# The closers are captured so that they stay with the sentence they close.
_SENTENCE_END = r"(?<=[.!?])(?P<closers>[\"')\]]*)\s+"
_BLANK_LINE = r"\n[ \t]*\n\s*"
_BEFORE_LIST_ITEM = r"\n(?=[ \t]*(?:[-*+]|\d+[.)])[ \t])"
_LINE_BREAK = r"\n"

_UNIT_BREAK = re.compile("|".join((_SENTENCE_END, _BLANK_LINE, _BEFORE_LIST_ITEM)))
_SENTENCE_BREAK = re.compile("|".join((_SENTENCE_END, _LINE_BREAK)))


def split_units(text: str) -> list[tuple[int, int]]:
    """Spans of the sentences, paragraphs and list items of ``text`` (what chunks are made of).

    A unit ends before the closing quotes or brackets after its full stop. That drops
    a closing quote at a chunk's end from the chunk's text; it is kept as it is on
    purpose, because chunk boundaries are what every built knowledge base and every
    measured accuracy rest on (including it changes the bundled set's chunks and
    answers). Changing it is a re-index and a re-measurement, not a refactor.
    """
    return _split(text, _UNIT_BREAK, keep_closers=False)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Spans of the sentences and lines of ``text`` (what sentence selection ranks);
    closing quotes and brackets stay with their sentence."""
    return _split(text, _SENTENCE_BREAK, keep_closers=True)


def trimmed_spans(text: str, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` of ``text`` without their leading and trailing white space; empty ones dropped."""
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def _split(text: str, breaks: re.Pattern[str], *, keep_closers: bool) -> list[tuple[int, int]]:
    """The spans between the matches of ``breaks``, trimmed."""
    spans = []
    start = 0
    for match in breaks.finditer(text):
        at_sentence_end = match.group("closers") is not None
        spans.append((start, match.end("closers") if at_sentence_end and keep_closers else match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return trimmed_spans(text, spans)
