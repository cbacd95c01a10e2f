"""bm25 terms of technical text: code identifiers, version numbers and error codes, in documents and queries.

SQLite's ``unicode61`` tokenizer, which indexes the chunk store, cuts text at every
character that is not a letter or a digit and lowercases it: ``os.path.join`` is
indexed as ``os path join``, ``read_csv`` as ``read csv``, ``E-204`` as ``e 204``,
``4.1.0`` as ``4 1 0``, and ``ReadTimeout`` as the single word ``readtimeout``. Two
things follow, and this module handles both, the same way for documents and queries:

- A compound in a query (``os.path.join``, ``read_csv``, ``4.1.0``, ``E-204``) is
  searched as a phrase of its parts, which matches only where they stand together,
  plus each part that carries meaning on its own (two characters or more, not a
  common word). Searching the parts one by one, as a plain word split would, lets
  ``4.1.0`` match every chunk holding a ``1`` and ``E-204`` every ``e``.
- A CamelCase word (``ReadTimeout``, ``HTTPServer``) is one token to ``unicode61``, so
  a query saying ``read timeout`` or ``read_timeout`` would not find it. Each chunk's
  CamelCase words are therefore also stored split (``read timeout``) in the FTS
  column ``terms`` (``document_terms``), and a CamelCase word in a query is searched
  both whole and as the phrase of its parts (``query_expression``).

Only ``query_expression``'s output reaches FTS5, each term quoted, so FTS5 syntax in a
user's text (``AND``, ``*``, ``"``, ``:``) stays literal.
"""

from __future__ import annotations

import re

#: Most terms (words and phrases) in one bm25 query, so a 10,000-character query stays fast.
MAX_QUERY_TERMS = 64
# Words that match most chunks: OR-ing them makes FTS5 score nearly every row (12 ms
# instead of 1 ms at 10k chunks) while adding almost nothing to bm25's ranking.
STOPWORDS = frozenset("""
a an and are as at be by can do does for from has have how i if in into is it its of on or
that the their them then there these this to was what when where which who why will with
you your
""".split())

# A compound: runs of letters and digits joined by single '.', '-' or '_' ("os.path.join",
# "E-204", "read_csv", "4.1.0"); a sentence's final period is not part of it.
_COMPOUND = re.compile(r"[^\W_]+(?:[._-][^\W_]+)*")
_PART = re.compile(r"[^\W_]+")  # what unicode61 keeps as one token (Unicode letters and digits)
_DOTTED = re.compile(r"[^\W_]+(?:[._][^\W_]+)+")  # "numpy.linalg.norm", "read_csv", "4.1.0"
_PLURAL_ACRONYM = re.compile(r"[A-Z]{2,}s")  # "LEDs", "APIs": a plural, not two words
_CASE_CHANGE = re.compile(r"[a-z][A-Z]|[A-Z]{2}[a-z]")  # "dT" of "readTimeout", "PSe" of "HTTPServer"
# The pieces of a CamelCase word: "HTTPServer2" -> HTTP, Server, 2; "parseJSON" -> parse, JSON.
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_A-Za-z]+")


def camel_parts(word: str) -> list[str]:
    """The lowercased pieces of a CamelCase word, or ``[]`` when ``word`` is not one.

    A word is CamelCase when it changes from lower to upper case inside
    (``readTimeout``, ``ReadTimeout``, ``HTTPServer``); ``HTTP``, ``LEDs``, ``Python`` and
    ``utf8`` are not.
    """
    if word.islower() or word.isupper() or _PLURAL_ACRONYM.fullmatch(word) or not _CASE_CHANGE.search(word):
        return []
    return [p.lower() for p in _CAMEL.findall(word)]


def names_identifier(text: str) -> bool:
    """True when ``text`` names something in code: a dotted or snake_case name or a version
    (``numpy.linalg.norm``, ``read_csv``, ``4.1.0``), or a CamelCase word (``MaskedArray``).

    Such a query is about the exact name, which bm25 matches and dense search only
    approximates (``KnowledgeBase.search`` weighs bm25 more for it). Hyphenated words
    (``co-founder``) are prose, not names.
    """
    return bool(_DOTTED.search(text)) or any(camel_parts(word) for word in _PART.findall(text))


def document_terms(heading: str, text: str) -> str:
    """The chunk's CamelCase words split into their pieces, for the FTS column ``terms``.

    ``"Raises ReadTimeout"`` gives ``"read timeout"``; a chunk without CamelCase words
    gives ``""``. Each word's pieces stay adjacent, so the query's phrase of them matches.
    """
    pieces = []
    for source in (heading, text):
        for word in _PART.findall(source):
            if parts := camel_parts(word):
                pieces.append(" ".join(parts))
    return " ".join(pieces)


def query_expression(text: str, *, drop: frozenset[str] = frozenset()) -> str:
    """An FTS5 MATCH expression for free text: its distinct terms and phrases, quoted, OR-ed.

    Plain words are searched as themselves; compounds and CamelCase words as described
    in the module docstring. Common English words (``STOPWORDS``) and single letters
    are left out unless the query has nothing else. At most ``MAX_QUERY_TERMS`` terms are kept. Returns
    ``""`` when the text has no words.
    """
    terms: dict[str, None] = {}
    fallback: dict[str, None] = {}  # the stopwords, should nothing else be left
    for compound in _COMPOUND.findall(text):
        parts = _PART.findall(compound)
        lowered = [p.lower() for p in parts]
        if len(parts) > 1:
            terms.setdefault(" ".join(lowered), None)
        for part, low in zip(parts, lowered, strict=True):
            # A lone letter ("s" of "Fenwhistle's", "e" of "E-204") matches nearly every chunk.
            if low in STOPWORDS or low in drop or (len(low) == 1 and not low.isdigit()):
                fallback.setdefault(low, None)
                continue
            if len(parts) == 1 or not low.isdigit():
                terms.setdefault(low, None)
            if split := camel_parts(part):
                terms.setdefault(" ".join(split), None)
    chosen = list(terms or fallback)[:MAX_QUERY_TERMS]
    return " OR ".join(f'"{term}"' for term in chosen)
