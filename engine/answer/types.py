"""What an answer is: its text, the passages it rests on, and the timings of each stage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from engine.generation.types import GenerationTimings

if TYPE_CHECKING:  # the knowledge base (hnswlib, SQLite) loads only when retrieval is used
    from engine.kb.results import SearchTimings

#: How a question is answered: "rag" (base model + retrieved passages), "baked" (the adapter
#: alone) or "hybrid" (the adapter reading the retrieved passages).
Mode = Literal["rag", "baked", "hybrid"]
MODES: tuple[Mode, ...] = ("rag", "baked", "hybrid")
#: How a RAG prompt's passages get their K/V: "off" (the prompt tokenized whole and
#: evaluated), "on" (each passage's precomputed chunk state spliced in, only the
#: question evaluated), "prefill" (the exact tokens "on" uses, all evaluated: the
#: baseline that isolates the splice's accuracy price).
SpliceMode = Literal["off", "on", "prefill"]
SPLICE_MODES: tuple[SpliceMode, ...] = ("off", "on", "prefill")
#: What a measured timing field's name ends with: its unit.
_UNITS = ("_ms", "_tokens", "_per_s")
#: Why generation ended: the model's end of turn, a stop string, ``max_tokens``, or a full context.
StopReason = Literal["eos", "stop", "length", "context_full"]


@dataclass(frozen=True)
class Passage:
    """One passage placed in a prompt, with where it came from and the text the model is shown."""

    label: int  # the [n] the model sees
    chunk_id: int
    source: str
    span: tuple[int, int]  # character offsets of ``text`` in ``source``
    heading: str
    text: str


@dataclass(frozen=True)
class Citation:
    """A passage a RAG answer was given, and whether the answer cites it by label.

    ``text`` is exactly what the model was shown (whole chunk or selected sentences,
    before quoting), so a citation can be displayed without re-reading the source.
    """

    label: int
    source: str
    chunk_id: int
    span: tuple[int, int]  # character offsets in ``source``
    heading: str
    text: str
    cited: bool  # the answer mentions ``[label]``


@dataclass(frozen=True)
class AnswerTimings:
    """Wall time of one answer, composed of the stages' own timings, in milliseconds.

    ``search`` is the knowledge base's :class:`SearchTimings` (None when nothing was
    retrieved: "baked" mode, or passages given by the caller); ``generation`` is the
    generator's :class:`GenerationTimings`. ``retrieval_ms`` is the search call as the
    answer saw it, ``prompt_build_ms`` the passages and prompt (tokenizing included).
    ``ttft_ms`` runs from the call to the first generated token; ``total_ms`` to the
    last. The stages add up: ``retrieval_ms + prompt_build_ms + generation.total_ms
    <= total_ms``. ``kv_ms`` is getting the passages' chunk states (splice "on": cache
    lookups, plus computing the ``kv_computed`` states that were not cached); the
    splice itself is ``generation.splice_ms``.
    """

    search: SearchTimings | None
    generation: GenerationTimings
    retrieval_ms: float
    prompt_build_ms: float
    ttft_ms: float
    total_ms: float
    kv_ms: float = 0.0
    kv_computed: int = 0

    def flat(self) -> dict[str, float | int | None]:
        """The measured fields, nested ones under dotted names (``"search.embed_ms"``).

        A field is measured when its name carries a unit (``_ms``, ``_tokens``, ``_per_s``);
        an absent nested timings object (``search`` of an answer that searched nothing)
        gives ``None`` for each of its fields. The one flattening the report, the pytest
        plugin and the server use.
        """
        from engine.kb.results import SearchTimings  # loaded only here: the kb's types pull in hnswlib

        nested: dict[str, type] = {"search": SearchTimings, "generation": GenerationTimings}
        flat: dict[str, float | int | None] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in nested:
                for inner in dataclasses.fields(nested[field.name]):
                    if inner.name.endswith(_UNITS):
                        flat[f"{field.name}.{inner.name}"] = getattr(value, inner.name) if value is not None else None
            elif field.name.endswith(_UNITS):
                flat[field.name] = value
        return flat


@dataclass(frozen=True)
class Answer:
    """An answer, how it was produced, what it rests on, and how long each stage took."""

    question: str
    text: str
    mode: Mode
    citations: tuple[Citation, ...]
    timings: AnswerTimings
    stop_reason: StopReason
