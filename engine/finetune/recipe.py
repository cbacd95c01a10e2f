"""The fine-tune recipe end to end: knowledge set in, GGUF LoRA adapter out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import InputError
from engine.finetune._deps import require_torch
from engine.finetune.config import FinetuneConfig
from engine.finetune.data import document_examples, load_qa, qa_examples, training_system_prompt
from engine.finetune.export import write_adapter
from engine.finetune.gguf_weights import load_base
from engine.finetune.torch_model import LlamaModel
from engine.finetune.train import TrainProgress, train_lora
from engine.generation.tokenizer import Tokenizer
from engine.questions.qa import Question, round_robin, select_facts, unseen_documents

if TYPE_CHECKING:
    from engine.finetune.reader import ReaderExamples
    from engine.kb import KnowledgeBase


@dataclass(frozen=True)
class FinetuneReport:
    """What ``finetune`` did and where the adapter is."""

    adapter_path: Path
    system_prompt: str  # the system message of every trained question, also stored in the adapter
    n_facts: int
    n_qa_examples: int
    n_doc_examples: int
    n_reader_examples: int  # question with passages: gold among distractors, or distractors only
    n_reader_distractors_only: int
    n_reader_spliced: int  # of the reader examples, trained as spliced blocks
    n_reader_skipped: int  # no passage holds the answer, or longer than reader_max_tokens
    n_reader_counterfactual: int  # of the reader examples: a trained fact, its value replaced in the passages
    n_reader_practice: int  # of the reader examples: a fact not trained on, its value replaced
    steps: int
    epochs: int
    final_loss: float  # mean loss of the last epoch, nats/token
    train_seconds: float
    total_seconds: float  # including loading the base model and writing the adapter
    tokens_per_s: float
    stopped_early: bool
    config: FinetuneConfig


def finetune(
    docs_dir: str | Path,
    qa_path: str | Path,
    base_model_path: str | Path,
    out_path: str | Path,
    *,
    config: FinetuneConfig = FinetuneConfig(),
    kb: str | Path | KnowledgeBase | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
) -> FinetuneReport:
    """Bake the knowledge set's TRAIN questions into a LoRA adapter for ``base_model_path``.

    Each training example is the question, with the system prompt, rendered by the
    model's own chat template exactly as inference renders it, followed by the answer
    and the template's end of turn; the loss covers the answer only. The system prompt
    is ``config.system_prompt``, or else names the subject of the knowledge set's
    ``set.json`` (``engine.generation.chat.baked_system_prompt``); it is written into the adapter
    (``bakeoff.system_prompt``). Held-out questions are never trained on. With
    ``config.use_documents`` the documents' text is trained on as well (next-token
    prediction). With ``config.reader_per_fact`` (the default) part of the
    train questions are also trained with passages retrieved from ``kb`` (RAFT-style,
    ``engine.finetune.reader``), so the adapter reads sources in "hybrid" mode. The
    documents the set's ``set.json`` lists as "unseen_documents" are never trained on,
    as text or as passages.

    Args:
        docs_dir: folder of the knowledge set's ``*.md`` documents.
        qa_path: the knowledge set's ``qa.jsonl``.
        base_model_path: the Llama-architecture ``.gguf`` to adapt (with a chat template).
        out_path: where to write the GGUF LoRA adapter.
        config: hyper-parameters; the defaults fit 2 CPU cores.
        kb: the knowledge base of ``docs_dir`` (a folder or an open ``KnowledgeBase``),
            searched for the reader examples; needed unless ``reader_per_fact`` is 0.
        progress: called after every optimizer step.

    Raises:
        InputError: a setting is out of range, the QA file, ``set.json`` or documents
            are unusable, no train questions remain, or reader examples are asked for
            without a ``kb``.
        ModelError: the base model cannot be read or has no chat template.
        AdapterError: the adapter cannot be written.
        MissingExtraError: torch or gguf is not installed.
    """
    config.validate()
    torch = require_torch()
    started = time.perf_counter()
    questions = load_qa(qa_path)
    items = select_facts(questions, config.limit_facts, spread=config.spread_facts)
    train_items = [item for item in items if item.split == "train"]
    if not train_items:
        raise InputError(f"{qa_path} has no 'train' questions (limit_facts={config.limit_facts}); nothing to bake")
    if config.reader_per_fact and kb is None:
        raise InputError("the recipe trains the adapter to read retrieved passages too: pass kb= (the knowledge "
                         "base of these documents; `bakeoff finetune --kb DIR`), or set reader_per_fact=0")
    system_prompt = training_system_prompt(qa_path, config.system_prompt)
    unseen = unseen_documents(Path(qa_path).parent)
    tokenizer = Tokenizer(base_model_path)
    examples = qa_examples(train_items, tokenizer, system_prompt=system_prompt, answer_style=config.answer_style,
                           max_tokens=config.max_seq_tokens)
    n_qa = len(examples)
    if config.use_documents:
        # With limit_facts, only the documents those facts come from (keeps tiny runs tiny).
        sources = {Path(item.source).name for item in train_items} if config.limit_facts is not None else None
        holding = ([a for item in train_items for a in item.answers] if config.document_windows == "answers"
                   else None)
        examples += document_examples(docs_dir, tokenizer, max_tokens=config.max_seq_tokens, only=sources,
                                      holding=holding, exclude=unseen)
    n_docs = len(examples) - n_qa
    reader = _reader_examples(train_items, _practice_questions(questions, train_items, config), kb, docs_dir,
                              tokenizer, config, unseen) if config.reader_per_fact else None
    examples += reader.examples if reader else []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        base = load_base(base_model_path)
        torch.manual_seed(config.seed)
        model = LlamaModel(base, config.lora, matmul_dtype=config.matmul_dtype)
        report = train_lora(
            model,
            examples,
            lr=config.lr,
            epochs=config.epochs,
            batch_size=config.batch_size,
            seed=config.seed,
            weight_decay=config.weight_decay,
            stop_loss=config.stop_loss,
            max_seconds=config.max_train_seconds,
            progress=progress,
        )
        adapter = write_adapter(model.lora_state(), config.lora, out_path, architecture=base.hparams.architecture,
                                system_prompt=system_prompt)
    finally:
        torch.set_num_threads(previous_threads)
    return FinetuneReport(
        adapter_path=adapter,
        system_prompt=system_prompt,
        n_facts=len({item.fact_id for item in train_items}),
        n_qa_examples=n_qa,
        n_doc_examples=n_docs,
        n_reader_examples=len(reader.examples) if reader else 0,
        n_reader_distractors_only=reader.distractors_only if reader else 0,
        n_reader_spliced=reader.spliced if reader else 0,
        n_reader_skipped=reader.skipped if reader else 0,
        n_reader_counterfactual=reader.counterfactual if reader else 0,
        n_reader_practice=reader.practice if reader else 0,
        steps=report.steps,
        epochs=report.epochs,
        final_loss=report.final_loss,
        train_seconds=report.seconds,
        total_seconds=time.perf_counter() - started,
        tokens_per_s=report.tokens_per_s,
        stopped_early=report.stopped_early,
        config=config,
    )



def _practice_questions(questions: list[Question], train_items: list[Question],
                        config: FinetuneConfig) -> list[Question]:
    """``round(practice_per_fact * trained facts)`` train questions of facts outside the training
    selection, one per fact, spread over the documents (none when every fact is trained)."""
    trained = {item.fact_id for item in train_items}
    n_trained = len(trained)
    by_source: dict[str, dict[str, Question]] = {}
    for q in select_facts(questions, None):
        if q.split == "train" and q.fact_id not in trained:
            by_source.setdefault(q.source, {}).setdefault(q.fact_id, q)  # the fact's first wording
    queues = [list(facts.values()) for _, facts in sorted(by_source.items())]
    return round_robin(queues, round(config.practice_per_fact * n_trained))


def _reader_examples(train_items: list[Question], practice: list[Question], kb: str | Path | KnowledgeBase | None,
                     docs_dir: str | Path, tokenizer: Tokenizer, config: FinetuneConfig,
                     unseen: frozenset[str]) -> ReaderExamples:
    from engine.finetune.reader import choose_reader_questions, reader_examples
    from engine.kb import KnowledgeBase
    from engine.kb.ranking import MMR_LAMBDA
    from engine.questions.edits import Corpus

    chosen = choose_reader_questions(train_items, config.reader_per_fact, seed=config.seed)
    opened = kb if isinstance(kb, KnowledgeBase) else KnowledgeBase.open(kb)  # type: ignore[arg-type]
    try:
        return reader_examples(chosen, opened, tokenizer, passages=config.reader_passages,
                               distractor_share=config.distractor_share, block_share=config.block_share,
                               mmr_lambda=MMR_LAMBDA, max_tokens=config.reader_max_tokens,
                               excluded_sources=unseen, seed=config.seed,
                               counterfactual_share=config.counterfactual_share, practice=practice,
                               corpus=Corpus(docs_dir))
    finally:
        if opened is not kb:
            opened.close()
