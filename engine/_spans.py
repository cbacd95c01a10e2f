"""Character spans of text, trimmed: shared by chunking (``engine.kb``) and sentence
selection (``engine.scoring``), which must agree on where a sentence starts and ends."""

from __future__ import annotations

from collections.abc import Iterable


def trimmed_spans(text: str, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` of ``text`` without their leading and trailing whitespace; empty ones dropped."""
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out
