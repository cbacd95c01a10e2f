"""Reader examples (RAFT-style): a train question with passages the engine's own retrieval found.

One adapter serves both fine-tuned modes: "baked" asks the question alone, "hybrid"
asks it with retrieved passages. So, beside the question-alone examples, part of the
train questions are trained *with passages*:

- gold among distractors: the passage that holds the answer, at a random rank, with
  the question's other retrieved passages; the target is the answer citing that
  passage's label ("2014 [2].");
- distractors only (``distractor_share`` of them): retrieved passages none of which
  holds the answer; the target is ``engine.chat.NOT_IN_SOURCES``, so the reader learns
  not to invent.

Passages come from searching the knowledge base as ``Engine`` does, and prompts are
rendered by the same functions inference renders with (``build_rag_prompt``, or the
spliced layout for ``block_share`` of them, whose passages are then trained as
independent blocks: see ``LlamaModel.hidden``). Documents of the set's "unseen" split
are never shown, as gold or as distractor.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.answer.passages import chunk_passages
from engine.answer.prompt import build_rag_prompt
from engine.answer.spliced_prompt import SplicedLayout
from engine.bakeoff.qa import Question, answer_passage, first_answer_passage, holds_answer, round_robin
from engine.chat import NOT_IN_SOURCES
from engine.finetune.data import Example, Tokenizer

if TYPE_CHECKING:
    from engine.kb import Hit, KnowledgeBase

#: How deep a search the distractors are drawn from (more than any k a prompt takes).
_SEARCH_DEPTH = 12


@dataclass(frozen=True)
class ReaderExamples:
    """The reader examples made, and what could not be made."""

    examples: list[Example]
    with_gold: int
    distractors_only: int
    spliced: int  # of the above, in the spliced layout (trained as independent blocks)
    skipped: int  # no passage of the source holds the answer, or the prompt is over max_tokens


def choose_reader_questions(train_items: Sequence[Question], per_fact: float, *, seed: int) -> list[Question]:
    """``round(per_fact * facts)`` train questions for reader examples: each fact in turn (in an
    order drawn from ``seed``) gives another of its questions (also drawn), so 0.25 gives a
    quarter of the facts one each and 2.0 every fact two (at most all its questions)."""
    rng = random.Random(seed)
    by_fact: dict[str, list[Question]] = {}
    for item in train_items:
        by_fact.setdefault(item.fact_id, []).append(item)
    order = sorted(by_fact)
    rng.shuffle(order)
    for questions in by_fact.values():
        rng.shuffle(questions)
    return round_robin([by_fact[fact] for fact in order], round(per_fact * len(order)))


def cited_target(answer: str, label: int) -> str:
    """The reader's target: the answer as one sentence citing the passage ``[label]``."""
    return f"{answer.strip().rstrip('.!?')} [{label}]."


def reader_examples(items: Sequence[Question], kb: KnowledgeBase, tokenizer: Tokenizer, *, passages: int,
                    distractor_share: float, block_share: float, mmr_lambda: float, max_tokens: int,
                    excluded_sources: frozenset[str], seed: int) -> ReaderExamples:
    """One reader example per question of ``items`` (train questions the caller chose).

    Args:
        passages: passages per prompt (``Engine``'s ``k``, so training sees what inference sends).
        distractor_share: share of examples given distractors only.
        block_share: share of examples rendered in the spliced layout and trained as blocks.
        mmr_lambda: the MMR weight searches use (the engine's).
        max_tokens: examples longer than this are skipped (counted).
        excluded_sources: document file names never shown (the set's unseen documents).
        seed: draws which examples get distractors only or blocks, and the gold passage's rank.
    """
    rng = random.Random(seed)
    layout = SplicedLayout(tokenizer.chat, tokenizer.encode_part)
    out: list[Example] = []
    counts = {"gold": 0, "distractors": 0, "spliced": 0, "skipped": 0}
    for q in items:
        distractors_only = rng.random() < distractor_share
        spliced = rng.random() < block_share
        hits = [h for h in kb.search(q.question, k=_SEARCH_DEPTH, mmr_lambda=mmr_lambda).hits
                if Path(h.source).name not in excluded_sources]
        others = [h for h in hits if not holds_answer(h, q.answers)]
        # the best retrieved passage that holds the answer; else the best in the whole KB
        gold = None if distractors_only else first_answer_passage(hits, q) or answer_passage(kb, q)
        if (gold is None and not distractors_only) or len(others) < passages - (gold is not None):
            counts["skipped"] += 1
            continue
        shown: list[Hit] = others[: passages - (gold is not None)]
        if gold is not None:
            shown.insert(rng.randrange(passages), gold)
        example = _render(q, shown, gold, tokenizer, layout if spliced else None)
        if len(example.tokens) > max_tokens:
            counts["skipped"] += 1
            continue
        out.append(example)
        counts["distractors" if gold is None else "gold"] += 1
        counts["spliced"] += spliced
    return ReaderExamples(out, counts["gold"], counts["distractors"], counts["spliced"], counts["skipped"])


def _render(q: Question, shown: Sequence[Hit], gold: Hit | None, tokenizer: Tokenizer,
            layout: SplicedLayout | None) -> Example:
    """The prompt inference would send with ``shown`` as the retrieved hits, and the target after it."""
    passages = chunk_passages(shown)
    if layout is None:
        prompt = build_rag_prompt(q.question, passages, chat=tokenizer.chat, tokenize=tokenizer.encode_prompt,
                                  count_text=lambda text: len(tokenizer.encode_document(text)),
                                  budget_tokens=1 << 30)
        tokens, labels = list(prompt.tokens), [p.label for p in prompt.passages]
        prefix_len, blocks = 0, tuple[tuple[int, int], ...]()
    else:
        spliced = layout.build(q.question, passages, budget_tokens=1 << 30)
        tokens, labels = list(spliced.tokens), [p.label for p in spliced.passages]
        prefix_len, blocks = len(spliced.prefix), tuple((b.start, len(b.tokens)) for b in spliced.blocks)
    target = NOT_IN_SOURCES if gold is None else cited_target(q.answers[0], labels[list(shown).index(gold)])
    answer = tokenizer.encode_completion(tokenizer.chat.completion(target))
    return Example(tokens=tuple(tokens + answer), n_context=len(tokens),
                   kind="reader-blocks" if blocks else "reader", prefix_len=prefix_len, blocks=blocks)
