"""Counterfactual values: a fact's answer replaced by another value of the same kind.

Two users, one rule. Fine-tuning shows the reader passages whose value was changed
(``engine.finetune.reader``), so that following the passage is rewarded over recalling
the trained value (knowledge-aware fine-tuning, KAFT). The comparison edits a copy of
the documents the same way, re-indexes it and asks again without retraining: does the
reader give the passage's value or the one it was trained on (``engine.bakeoff.probes``)?

A value keeps its kind: every digit run becomes another number of as many digits (a
year another year, an hour another hour, "3,000" stays thousands), or, with no digits,
the last upper-case code becomes another code ("FW-R" → "FW-K"), or the capitalised
words become invented names of a similar length ("Oona Lindqvist" → "Vera Tolmask").
One mapping is applied to every accepted string of the fact, so "€59.90" and "59.90"
change alike. A replacement that occurs anywhere in the knowledge set's documents is
drawn again: the new value can only have come from the passage.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: Why a fact could not be edited (the keys of the skip counts a caller reports).
SKIP_AMBIGUOUS = "answer in several documents"
SKIP_NO_KIND = "no same-kind replacement"
SKIP_NOT_FOUND = "answer not in its document"
SKIP_OVERLAP = "answer overlaps another edited fact"

_DIGITS = re.compile(r"\d+")
_CODE = re.compile(r"\b[A-Z]{2,}\b|(?<=-)[A-Z]+\b")
_NAME = re.compile(r"\b[A-Z][a-z]{2,}\b")
_COLOURS = ("amber", "blue", "green", "red", "violet", "white", "yellow", "orange", "teal", "grey", "pink", "cyan")
_ONSETS = ("b", "br", "d", "f", "g", "h", "k", "kl", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "w", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "k", "m", "nd", "st", "th")
_YEAR = range(1950, 2041)


@dataclass(frozen=True)
class ValueEdit:
    """One fact's answer as a document had it (``old``) and as the edited copy has it (``new``).

    ``new[i]`` is ``old[i]`` with the same mapping applied; ``new[0]`` is what a reader
    of the edited passage should answer.
    """

    fact_id: str
    source: str  # the document that holds the fact, as the question set names it ("docs/x.md")
    old: tuple[str, ...]
    new: tuple[str, ...]

    def apply(self, text: str) -> str:
        """``text`` with every occurrence of an old accepted string replaced by its new one (longest first)."""
        for old, new in sorted(zip(self.old, self.new), key=lambda pair: -len(pair[0])):
            text = _bounded(old).sub(new.replace("\\", "\\\\"), text)
        return text


def _bounded(value: str) -> re.Pattern[str]:
    """``value`` as a case-insensitive pattern that does not match inside a longer word or number."""
    return re.compile(rf"(?<![\w]){re.escape(value)}(?![\w])", re.IGNORECASE)


def occurs(value: str, text: str) -> bool:
    """``value`` occurs in ``text`` as a whole word or number (case-insensitive)."""
    return bool(_bounded(value).search(text))


def replacement(answers: tuple[str, ...], rng: random.Random, taken: Callable[[str], bool],
                tries: int = 25) -> tuple[str, ...] | None:
    """The accepted strings ``answers`` with their value replaced by another of the same kind, or None.

    Args:
        answers: the fact's accepted strings, the one a document shows first.
        rng: draws the new value (seed it for reproducible sets).
        taken: True for a candidate that must not be used (e.g. it occurs in the documents);
            asked of the new first accepted string.
        tries: candidates drawn before giving up.
    """
    for _ in range(tries):
        mapping = _mapping(answers, rng)
        if mapping is None:
            return None
        new = tuple(_substitute(a, mapping) for a in answers)
        if all(n.casefold() != o.casefold() for n, o in zip(new, answers)) and not taken(new[0]):
            return new
    return None


def _mapping(answers: tuple[str, ...], rng: random.Random) -> dict[str, str] | None:
    """Old run → new run for the runs that carry the value (digits, else a code, else names)."""
    first = answers[0]
    if _DIGITS.search(first):
        runs = [m for a in answers for m in _DIGITS.finditer(a)]
        # "3,000": the zeros are the scale, the 3 the value (unless zeros are all there is)
        keep_zeros = any(set(m.group()) != {"0"} for m in runs)
        return {m.group(): _number(m, rng) for m in runs if not (keep_zeros and set(m.group()) == {"0"})}
    codes = [m.group() for a in answers for m in _CODE.finditer(a)]
    if codes:
        last = codes[-1]
        return {last: "".join(rng.choice("ABCDEFGHJKLMNPRSTVWXZ") for _ in last)}
    names = [m.group() for a in answers for m in _NAME.finditer(a)]
    if names:
        return {name: _invented_name(len(name), rng) for name in dict.fromkeys(names)}
    colours = [w for w in re.findall(r"[a-z]+", first.casefold()) if w in _COLOURS]
    if colours:
        return {colours[0]: rng.choice([c for c in _COLOURS if c != colours[0]])}
    return None


def _number(match: re.Match[str], rng: random.Random) -> str:
    """Another number in the place of ``match``: a year stays a year, an hour an hour, a minute a quarter."""
    run, text, start = match.group(), match.string, match.start()
    width, value = len(run), int(run)
    before, after = text[start - 1: start], text[match.end(): match.end() + 1]
    if width == 4 and value in _YEAR:
        choices = [y for y in range(value - 12, value + 13) if y != value and y in _YEAR]
    elif after == ":" and value < 24:
        choices = [h for h in range(6, 23) if h != value]
    elif before == ":" and value < 60:
        choices = [m for m in (0, 15, 30, 45) if m != value]
    elif width == 1:
        choices = [d for d in range(2, 10) if d != value]  # not 1: "1 hours"
    else:
        low = 10 ** (width - 1) if run[0] != "0" else 0
        choices = [rng.randrange(low, 10 ** width) for _ in range(8)]
        choices = [c for c in choices if c != value] or [value + 1]
    return str(rng.choice(choices)).zfill(width)


def _invented_name(length: int, rng: random.Random) -> str:
    """A pronounceable capitalised word of about ``length`` letters that no document uses."""
    word = ""
    while len(word) < max(3, length - 1):
        word += rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
    return word[: length + 2].capitalize()


def _substitute(answer: str, mapping: dict[str, str]) -> str:
    if not mapping:
        return answer
    pattern = re.compile("|".join(rf"(?<![\w]){re.escape(old)}(?![\w])" if not old.isdigit()
                                  else rf"(?<!\d){re.escape(old)}(?!\d)"
                                  for old in sorted(mapping, key=len, reverse=True)))
    return pattern.sub(lambda m: mapping.get(m.group(), m.group()), answer)


class Corpus:
    """The text of a knowledge set's documents (``docs/`` and its sibling ``updates/``), to check
    where a value occurs.

    Args:
        docs_dir: the documents folder; ``docs_dir.parent / "updates"`` is read too when present.
    """

    def __init__(self, docs_dir: str | Path) -> None:
        docs = Path(docs_dir)
        folders = [docs, docs.parent / "updates"]
        self.texts: dict[str, str] = {
            f"{folder.name}/{path.name}": path.read_text(encoding="utf-8")
            for folder in folders if folder.is_dir() for path in sorted(folder.glob("*.md"))}

    def holding(self, value: str) -> list[str]:
        """The documents ("docs/x.md", "updates/x.md") in which ``value`` occurs as a whole word or number."""
        pattern = _bounded(value)
        return [name for name, text in self.texts.items() if pattern.search(text)]

    def taken(self, value: str) -> bool:
        """``value`` occurs in some document (so it cannot serve as a counterfactual)."""
        folded = value.casefold()
        return any(folded in text.casefold() for text in self.texts.values())


def plan_edits(facts: Iterable[tuple[str, str, tuple[str, ...]]], corpus: Corpus, *,
               seed: str) -> tuple[list[ValueEdit], dict[str, int]]:
    """Edits for ``facts`` (fact id, source "docs/x.md", accepted strings), at most one per fact,
    each drawn from ``seed`` and the fact id; and the count of facts skipped per reason
    (``SKIP_*``): an answer that occurs in another document (or an update of another one),
    one not found in its document, one overlapping a fact already edited in the same
    document, or a value with no same-kind replacement.
    """
    edits: list[ValueEdit] = []
    skipped: dict[str, int] = {}
    touched: dict[str, list[str]] = {}
    for fact_id, source, answers in facts:
        reason = None
        name = Path(source).name
        holding = {Path(h).name for h in corpus.holding(answers[0])}
        if source not in corpus.texts or not occurs(answers[0], corpus.texts[source]):
            reason = SKIP_NOT_FOUND
        elif holding - {name}:
            reason = SKIP_AMBIGUOUS
        elif any(occurs(a, t) or occurs(t, a) for a in answers for t in touched.get(source, [])):
            reason = SKIP_OVERLAP
        else:
            new = replacement(answers, random.Random(f"{seed}/{fact_id}"), corpus.taken)
            if new is None:
                reason = SKIP_NO_KIND
            else:
                edits.append(ValueEdit(fact_id, source, answers, new))
                touched.setdefault(source, []).extend([*answers, *new])
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
    return edits, skipped
