"""Does the reader read? Two probes on edited copies of the knowledge base, the adapter not retrained.

*Follows the passage*: the graded facts' values are replaced in a copy of the documents
by others of the same kind (``engine.questions.edits``, a seed of its own, so no value the
recipe trained on), the copy is indexed, and the facts' questions are asked again with
its hits: the share of answers giving the passage's new value, and the share giving the
old, trained one. A fact whose answer occurs in several documents cannot be edited
unambiguously; it is skipped and counted.

*Abstains when it should*: every other source document of the graded facts is removed
from a second copy; the questions of those facts (whose answers no remaining document
holds) are asked with its hits: the share answered "not in the sources"
(``engine.generation.chat.is_abstention``), the share answered with the old value from memory, and
the share answered with some other value.

Both are asked in rag, hybrid and, with a chunk-KV cache, hybrid-spliced, each mode
given the same hits.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.generation.chat import is_abstention
from engine.questions.edits import Corpus, ValueEdit, plan_edits
from engine.questions.qa import Question, is_correct

if TYPE_CHECKING:
    from engine.answer import Mode
    from engine.answer.types import SpliceMode
    from engine.bakeoff.grading import GradedAnswer
    from engine.facade import Engine
    from engine.kb import Hit, KnowledgeBase

#: Rows of the probes: label → (mode, splice).
PROBE_MODES: dict[str, tuple[Mode, SpliceMode]] = {
    "rag": ("rag", "off"), "hybrid": ("hybrid", "off"), "hybrid-spliced": ("hybrid", "on")}
#: The seed of the edited-value set's replacements (training draws from the recipe's seed).
PROBE_SEED = "probe-follows"

Grade = Callable[..., "GradedAnswer"]


@dataclass
class ProbeResult:
    """The graded probe answers (splits "edited" and "removed") and their shares per mode."""

    answers: list[GradedAnswer] = field(default_factory=list)
    follows: dict[str, dict[str, float | int]] = field(default_factory=dict)
    abstains: dict[str, dict[str, float | int]] = field(default_factory=dict)
    skips: dict[str, int] = field(default_factory=dict)


def probe_reading(engine: Engine, graded: Sequence[Question], docs_dir: Path, scratch: Path, *, grade: Grade,
                  limit: int | None, say: Callable[[str, int, int], None]) -> ProbeResult:
    """Run both probes on the graded train and held-out questions (at most ``limit`` of each probe).

    Args:
        engine: answers; its knowledge base gives the embedder and chunking of the copies.
        graded: the comparison's graded questions (train and held-out).
        docs_dir: the v1 documents.
        scratch: a folder for the two copies (removed afterwards).
        grade: ``grading.grade``: asks one question and grades it.
        limit: questions per probe (None: every graded question of the probed facts).
        say: progress (phase, done, total).
    """
    result = ProbeResult()
    if engine.kb is None:  # no rag, no hybrid: nothing reads passages
        return result
    labels = [label for label, (mode, splice) in PROBE_MODES.items()
              if mode in engine.modes and (splice == "off" or engine.kv_cache is not None)]
    corpus = Corpus(docs_dir)
    facts = {q.fact_id: q for q in graded if q.split in ("train", "heldout")}
    edits, skips = plan_edits([(q.fact_id, q.source, q.answers) for q in facts.values()], corpus, seed=PROBE_SEED)
    result.skips = skips
    by_fact = {edit.fact_id: edit for edit in edits}
    sources = sorted({q.source for q in facts.values()})
    removed = set(sources[1::2])
    kept_docs = {name: text for name, text in corpus.texts.items()
                 if name.startswith("docs/") and name not in removed}
    abstain_facts = {fid for fid, q in facts.items() if q.source in removed
                     and not any(is_correct(text, q.answers) for text in kept_docs.values())}
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        edited_questions = [q for q in graded if q.fact_id in by_fact][:limit]
        with knowledge_base_copy(engine.kb, docs_dir, scratch / "edited", edit=list(by_fact.values())) as kb:
            result.answers += _ask(engine, kb, edited_questions, labels, "edited",
                                   lambda q: by_fact[q.fact_id].new, grade, say)
        removed_questions = [q for q in graded if q.fact_id in abstain_facts][:limit]
        with knowledge_base_copy(engine.kb, docs_dir, scratch / "removed", remove=removed) as kb:
            result.answers += _ask(engine, kb, removed_questions, labels, "removed", lambda q: q.answers,
                                   grade, say)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    old = {q.id: q.answers for q in graded}
    for label in labels:
        edited = [a for a in result.answers if a.mode == label and a.split == "edited"]
        if edited:
            result.follows[label] = {"n": len(edited), "passage": _share(a.correct for a in edited),
                                     "old": _share(is_correct(a.answer, old[a.question_id]) for a in edited)}
        gone = [a for a in result.answers if a.mode == label and a.split == "removed"]
        if gone:
            abstained = [is_abstention(a.answer) for a in gone]
            memory = [not ab and a.correct for a, ab in zip(gone, abstained)]
            result.abstains[label] = {"n": len(gone), "abstained": _share(abstained), "memory": _share(memory),
                                      "wrong": 1.0 - _share(abstained) - _share(memory)}
    return result


def _ask(engine: Engine, kb: KnowledgeBase, questions: Sequence[Question], labels: Sequence[str], split: str,
         accepted: Callable[[Question], tuple[str, ...]], grade: Grade,
         say: Callable[[str, int, int], None]) -> list[GradedAnswer]:
    """Each question once per label, every label given the same hits of ``kb``."""
    hits: dict[str, Sequence[Hit]] = {q.id: engine.retrieve(q.question, kb=kb).hits for q in questions}
    answers = []
    for label in labels:
        mode, splice = PROBE_MODES[label]
        for done, q in enumerate(questions, 1):
            answers.append(grade(engine, q, mode, split, accepted(q), passages=hits[q.id], label=label,
                                 splice=splice))
            say(f"{split}/{label}", done, len(questions))
    return answers


def knowledge_base_copy(kb: KnowledgeBase, docs_dir: Path, into: Path, *, edit: Sequence[ValueEdit] = (),
          remove: set[str] = frozenset()) -> KnowledgeBase:  # type: ignore[assignment]
    """A knowledge base (``into/kb``) of a copy of ``docs_dir`` (``into/docs``) with ``edit`` applied and
    the ``remove``d documents left out, built with ``kb``'s embedder, HNSW settings and chunking."""
    from engine.kb import KnowledgeBase

    docs = into / "docs"
    docs.mkdir(parents=True)
    for path in sorted(Path(docs_dir).glob("*.md")):
        name = f"docs/{path.name}"
        if name in remove:
            continue
        text = path.read_text(encoding="utf-8")
        for change in (e for e in edit if e.source == name):
            text = change.apply(text)
        (docs / path.name).write_text(text, encoding="utf-8")
    built = kb.stats()
    return KnowledgeBase.build(docs, into / "kb", embedder=kb.embedder, hnsw=built.hnsw,
                               chunk_tokens=built.chunking.chunk_tokens,
                               overlap_tokens=built.chunking.overlap_tokens)


def _share(flags) -> float:
    values = [bool(f) for f in flags]
    return sum(values) / len(values) if values else 0.0
