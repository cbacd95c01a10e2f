"""The names of ``KnowledgeBase``'s arguments: ``build(documents, into)``, ``search(mmr_lambda=)``,
the deprecated spellings that still work for a release, and the arguments it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import InputError, KnowledgeBaseCorruptError
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


def test_the_old_path_keyword_still_builds_with_a_deprecation_warning(tmp_path, embedder):
    docs = _note(tmp_path / "docs")
    with pytest.warns(DeprecationWarning, match=r"build\(path=\.\.\.\) is deprecated.*use into=") as caught:
        kb = KnowledgeBase.build([docs], path=tmp_path / "kb", embedder=embedder)
    assert kb.stats().documents == 1
    assert caught[0].filename == __file__, "the warning points at the caller's line"


def test_build_without_a_folder_or_with_two_different_ones_is_refused(tmp_path, embedder):
    docs = _note(tmp_path / "docs")
    with pytest.raises(InputError, match="needs into="):
        KnowledgeBase.build([docs], embedder=embedder)
    with pytest.warns(DeprecationWarning), pytest.raises(InputError, match="give into= only"):
        KnowledgeBase.build([docs], tmp_path / "a", path=tmp_path / "b", embedder=embedder)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_building_into_a_file_says_a_knowledge_base_is_a_folder(tmp_path, embedder):
    docs = _note(tmp_path / "docs")
    target = tmp_path / "kb.txt"
    target.write_text("not a folder")
    with pytest.raises(InputError, match="is a file: a knowledge base is a folder"):
        KnowledgeBase.build(docs, target, embedder=embedder)
    with pytest.raises(KnowledgeBaseCorruptError, match="is a file, not a knowledge base folder"):
        KnowledgeBase.open(target, embedder=embedder)


def test_mmr_lambda_is_the_weight_and_lam_its_deprecated_spelling(kb):
    relevance_only = [h.chunk_id for h in kb.search("warranty pump office", k=4, mmr_lambda=1.0).hits]
    with pytest.warns(DeprecationWarning, match=r"search\(lam=\.\.\.\) is deprecated.*use mmr_lambda="):
        old = [h.chunk_id for h in kb.search("warranty pump office", k=4, lam=1.0).hits]
    assert old == relevance_only
    with pytest.warns(DeprecationWarning), pytest.raises(InputError, match="give mmr_lambda= only"):
        kb.search("warranty", mmr_lambda=0.2, lam=0.9)


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


def test_add_takes_documents_and_its_old_keyword_warns(tmp_path, kb, embedder):
    target = tmp_path / "kb"
    KnowledgeBase.build(_note(tmp_path / "docs"), target, embedder=embedder).close()
    with KnowledgeBase.open(target, embedder=embedder) as opened:
        extra = tmp_path / "more" / "tea.txt"
        extra.parent.mkdir()
        extra.write_text("Green tea is brewed at 80 degrees.", encoding="utf-8")
        with pytest.warns(DeprecationWarning, match=r"add\(paths=\.\.\.\)"):
            assert opened.add(paths=[extra]).added == (str(extra),)
        with pytest.raises(InputError, match="needs the documents"):
            opened.add()
