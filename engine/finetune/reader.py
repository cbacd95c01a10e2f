"""Reader examples (RAFT-style): a train question with passages the engine's own retrieval found.

One adapter serves both fine-tuned modes: "baked" asks the question alone, "hybrid"
asks it with retrieved passages. So, beside the question-alone examples, part of the
train questions are trained *with passages*:

- gold among distractors: the passage that holds the answer, at a random rank, with
  the question's other retrieved passages; the target is the answer citing that
  passage's label ("2014 [2].");
- distractors only (``distractor_share`` of them): retrieved passages none of which
  holds the answer; the target is ``engine.generation.chat.NOT_IN_SOURCES``, so the reader learns
  not to invent;
- counterfactual (``counterfactual_share`` of the gold ones): the answer's value replaced
  in every shown passage by another of the same kind that no document holds
  (``engine.questions.edits``); the target is the passage's value. Every example above is
  about a fact the same adapter also bakes, and context that only repeats what a model
  knows teaches it to stop reading (context-parametric inversion); a value that
  contradicts its memory can only be answered by reading (KAFT);
- reading practice: questions of facts the adapter is *not* trained on (outside the
  selection, never of the unseen documents), their passages edited the same way, so
  only reading can answer them either.

The priority this teaches: the passage, over memory; with no passage that holds the
answer, "The sources do not say." (never the remembered value).

Passages come from searching the knowledge base as ``Engine`` does, and prompts are
rendered by the same functions inference renders with (``build_rag_prompt``, or the
spliced layout for ``block_share`` of them, whose passages are then trained as
independent blocks: see ``LlamaModel.hidden``). Documents of the set's "unseen" split
are never shown, as gold or as distractor.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.answer.passages import chunk_passages
from engine.answer.prompt import build_rag_prompt
from engine.answer.spliced_prompt import SplicedLayout
from engine.errors import InputError
from engine.finetune.data import Example
from engine.generation.chat import NOT_IN_SOURCES
from engine.generation.tokenizer import Tokenizer
from engine.questions.edits import Corpus, ValueEdit, replacement
from engine.questions.qa import Question, answer_passage, first_answer_passage, holds_answer, round_robin

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
    counterfactual: int = 0  # of with_gold: the passages' value replaced (trained facts)
    practice: int = 0  # of with_gold: facts the adapter is not trained on, values replaced
    not_edited: int = 0  # asked to be counterfactual, but the value could not be replaced (kept real)


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
                    excluded_sources: frozenset[str], seed: int, counterfactual_share: float = 0.0,
                    practice: Sequence[Question] = (), corpus: Corpus | None = None) -> ReaderExamples:
    """One reader example per question of ``items`` (train questions the caller chose) and of ``practice``.

    Args:
        passages: passages per prompt (``Engine``'s ``k``, so training sees what inference sends).
        distractor_share: share of examples given distractors only.
        block_share: share of examples rendered in the spliced layout and trained as blocks.
        mmr_lambda: the MMR weight searches use (the engine's).
        max_tokens: examples longer than this are skipped (counted).
        excluded_sources: document file names never shown (the set's unseen documents).
        seed: draws which examples get distractors only, a replaced value or blocks, the
            replacement values, and the gold passage's rank.
        counterfactual_share: share of the gold examples of ``items`` whose value is replaced.
        practice: questions of facts the adapter is not trained on: gold examples, value
            always replaced (a question whose value cannot be replaced is skipped).
        corpus: the documents, to draw values no document holds; needed with
            ``counterfactual_share`` or ``practice``.
    """
    if (counterfactual_share or practice) and corpus is None:
        raise InputError("counterfactual and practice examples need the documents: pass corpus=Corpus(docs_dir)")
    rng = random.Random(seed)
    layout = SplicedLayout(tokenizer.chat, tokenizer.encode_part)
    out: list[Example] = []
    counts = {"gold": 0, "distractors": 0, "spliced": 0, "skipped": 0, "counterfactual": 0, "practice": 0,
              "not_edited": 0}
    trained = len(items)
    for index, q in enumerate([*items, *practice]):
        is_practice = index >= trained
        distractors_only = not is_practice and rng.random() < distractor_share
        counterfactual = is_practice or (not distractors_only and rng.random() < counterfactual_share)
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
        answer = q.answers[0]
        if counterfactual and gold is not None:
            assert corpus is not None
            edited = _counterfactual(q, shown, gold, corpus, rng)
            if edited is None and is_practice:
                counts["skipped"] += 1
                continue
            if edited is None:
                counts["not_edited"] += 1
            else:
                shown, gold, answer = edited
                counts["practice" if is_practice else "counterfactual"] += 1
        example = _render(q, shown, gold, answer, tokenizer, layout if spliced else None)
        if len(example.tokens) > max_tokens:
            counts["skipped"] += 1
            continue
        out.append(example)
        counts["distractors" if gold is None else "gold"] += 1
        counts["spliced"] += spliced
    return ReaderExamples(out, counts["gold"], counts["distractors"], counts["spliced"], counts["skipped"],
                          counts["counterfactual"], counts["practice"], counts["not_edited"])


def _counterfactual(q: Question, shown: list[Hit], gold: Hit, corpus: Corpus,
                    rng: random.Random) -> tuple[list[Hit], Hit, str] | None:
    """``shown`` with the answer's value replaced in every passage (text and heading trail), the
    edited gold passage and the new answer; None when the value has no same-kind replacement, or
    occurs in another document (a shown distractor could then hold the old value: ambiguous)."""
    if {Path(name).name for name in corpus.holding(q.answers[0])} - {Path(q.source).name}:
        return None
    new = replacement(q.answers, rng, corpus.taken)
    if new is None:
        return None
    edit = ValueEdit(q.fact_id, q.source, q.answers, new)
    edited = [dataclasses.replace(h, text=edit.apply(h.text), heading=edit.apply(h.heading)) for h in shown]
    gold_edited = edited[shown.index(gold)]
    # the target is a new accepted string the passage shows ("up to 41" where "41 devices" is not written)
    value = next((n for n in new if holds_answer(gold_edited, (n,))), None)
    if value is None or any(holds_answer(h, q.answers) for h in edited):
        return None
    return edited, gold_edited, value


def _render(q: Question, shown: Sequence[Hit], gold: Hit | None, answer: str, tokenizer: Tokenizer,
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
    target = NOT_IN_SOURCES if gold is None else cited_target(answer, labels[list(shown).index(gold)])
    completion = tokenizer.encode_completion(tokenizer.chat.completion(target))
    return Example(tokens=tuple(tokens + completion), n_context=len(tokens),
                   kind="reader-blocks" if blocks else "reader", prefix_len=prefix_len, blocks=blocks)
