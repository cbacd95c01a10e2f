"""The names of ``KnowledgeBase``'s arguments: ``build(documents, into)``, ``search(mmr_lambda=)``,
the deprecated spellings that still work for a release, and the arguments it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ChunkingMismatchError, InputError, KnowledgeBaseCorruptError
from engine.kb import KnowledgeBase

from .conftest import write_corpus


@pytest.fixture(scope="module")
def kb(tmp_path_factory, embedder) -> KnowledgeBase:
    """The small corpus, built once for the read-only tests."""
    root = tmp_path_factory.mktemp("api")
    with KnowledgeBase.build(write_corpus(root / "docs"), root / "kb", embedder=embedder) as built:
        yield built


def _note(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "note.md").write_text("# Note\n\nThe Leeds office opens at nine.\n", encoding="utf-8")
    return folder


def test_build_takes_the_documents_then_the_folder_to_build_into(tmp_path, embedder):
    docs = _note(tmp_path / "docs")
    by_keyword = KnowledgeBase.build(documents=docs, into=tmp_path / "a", embedder=embedder)
    by_position = KnowledgeBase.build([docs / "note.md"], tmp_path / "b", embedder=embedder)
    assert by_keyword.stats().documents == by_position.stats().documents == 1
    assert (tmp_path / "a" / "manifest.json").is_file() and (tmp_path / "b" / "manifest.json").is_file()


def test_build_without_a_folder_is_refused_and_the_0_1_spellings_are_gone(tmp_path, embedder):
    docs = _note(tmp_path / "docs")
    with pytest.raises(InputError, match="needs into="):
        KnowledgeBase.build([docs], embedder=embedder)
    with pytest.raises(TypeError, match="path"):  # renamed to into= before 0.1 had users; the old name is not kept
        KnowledgeBase.build([docs], path=tmp_path / "b", embedder=embedder)  # type: ignore[call-arg]
    assert not (tmp_path / "b").exists()


def test_building_into_a_file_says_a_knowledge_base_is_a_folder(tmp_path, embedder):
    docs = _note(tmp_path / "docs")
    target = tmp_path / "kb.txt"
    target.write_text("not a folder")
    with pytest.raises(InputError, match="is a file: a knowledge base is a folder"):
        KnowledgeBase.build(docs, target, embedder=embedder)
    with pytest.raises(KnowledgeBaseCorruptError, match="is a file, not a knowledge base folder"):
        KnowledgeBase.open(target, embedder=embedder)


def test_mmr_lambda_is_the_weight_and_lam_is_not_an_argument(kb):
    relevance_only = [h.chunk_id for h in kb.search("warranty pump office", k=4, mmr_lambda=1.0).hits]
    diverse = [h.chunk_id for h in kb.search("warranty pump office", k=4, mmr_lambda=0.0).hits]
    assert relevance_only[0] == diverse[0] and len(relevance_only) == 4
    with pytest.raises(TypeError, match="lam"):
        kb.search("warranty", lam=0.9)  # type: ignore[call-arg]


@pytest.mark.parametrize(("arguments", "said"), [
    ({"mmr_lambda": 1.5}, "mmr_lambda=1.5 must be between 0"),
    ({"mmr_lambda": "high"}, "mmr_lambda='high' must be between 0"),
    ({"candidates": 0}, "candidates=0"),
    ({"w_dense": 0.0, "w_lexical": 0.0}, "one weight above 0"),
    ({"k_rrf": -60.0}, "k_rrf=-60.0"),
    ({"k": 2.5}, "k >= 1"),
], ids=["lambda-range", "lambda-type", "candidates", "weights", "k_rrf", "k"])
def test_search_arguments_that_cannot_rank_are_input_errors(kb, arguments, said):
    with pytest.raises(InputError, match=said.replace("(", r"\(")):
        kb.search("warranty", **arguments)


def test_add_takes_documents_and_not_its_0_1_keyword(tmp_path, kb, embedder):
    target = tmp_path / "kb"
    KnowledgeBase.build(_note(tmp_path / "docs"), target, embedder=embedder).close()
    with KnowledgeBase.open(target, embedder=embedder) as opened:
        extra = tmp_path / "more" / "tea.txt"
        extra.parent.mkdir()
        extra.write_text("Green tea is brewed at 80 degrees.", encoding="utf-8")
        with pytest.raises(TypeError, match="paths"):
            opened.add(paths=[extra])  # type: ignore[call-arg]
        assert opened.add([extra]).added == (str(extra),)
        with pytest.raises(InputError, match="needs the documents"):
            opened.add()


def test_open_or_build_builds_once_then_adds_and_exact_keeps_only_the_given_documents(tmp_path, embedder):
    docs = _note(tmp_path / "docs")
    target = tmp_path / "kb"
    kb, report = KnowledgeBase.open_or_build(docs, target, embedder=embedder, chunk_tokens=64, overlap_tokens=8)
    with kb:
        assert report.added == (str(docs / "note.md"),) and kb.stats().chunking.chunk_tokens == 64
    (docs / "tea.md").write_text("# Tea\n\nGreen tea is brewed at 80 degrees.\n", encoding="utf-8")
    other = tmp_path / "elsewhere" / "porto.md"
    other.parent.mkdir()
    other.write_text("# Porto\n\nThe Porto office opens at ten.\n", encoding="utf-8")
    kb, report = KnowledgeBase.open_or_build([docs, other], target, embedder=embedder)
    with kb:  # opened, not rebuilt: the note is unchanged, tea and the other note are new
        assert set(report.added) == {str(docs / "tea.md"), str(other)}
        assert kb.stats().chunking.chunk_tokens == 64
    (docs / "tea.md").unlink()
    kb, _ = KnowledgeBase.open_or_build(docs, target, embedder=embedder, exact=True)
    with kb:
        assert kb.sources() == [str(docs / "note.md")]  # tea (deleted) and the other folder's note are gone


def test_open_or_build_refuses_another_chunking_unless_rebuilding(tmp_path, embedder):
    docs = _note(tmp_path / "docs")
    target = tmp_path / "kb"
    KnowledgeBase.open_or_build(docs, target, embedder=embedder)[0].close()
    with pytest.raises(ChunkingMismatchError, match="built with chunk_tokens=200, overlap_tokens=40") as caught:
        KnowledgeBase.open_or_build(docs, target, embedder=embedder, chunk_tokens=64, overlap_tokens=40)
    assert caught.value.asked == {"chunk_tokens": 64} and caught.value.built["chunk_tokens"] == 200
    kb, _ = KnowledgeBase.open_or_build(docs, target, embedder=embedder, chunk_tokens=64, overlap_tokens=8,
                                        rebuild=True)
    with kb:
        assert kb.stats().chunking.chunk_tokens == 64
