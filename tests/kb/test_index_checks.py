"""The checks every open runs on index.hnsw, vectors.npy and ids.npy before hnswlib touches them.

hnswlib trusts its file: a damaged neighbour id crashed the process in ``knn_query``
(SIGSEGV), and damaged arrays gave different hits without a word (issue 12). The
graph files here are real hnswlib files, damaged at offsets found by parsing the
format independently of ``engine/kb/hnsw_file.py``. Damage that crashed the old code
is opened in a child process, so a crash fails one test instead of the session.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.errors import EngineError, KnowledgeBaseCorruptError
from engine.kb import index
from engine.kb.index import HnswConfig
from engine.kb.knowledge_base import KnowledgeBase

HEADER = "<QQQQQQiIQQQdQ"  # hnswlib 0.8.0 saveIndex: see engine/kb/hnsw_file.py
DIM, M = 16, 8


# ------------------------------------------------------------------ an independent reader of the format


class Layout:
    """Offsets in an hnswlib index file, parsed with struct (not with the code under test)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = path.read_bytes()
        fields = struct.unpack_from(HEADER, raw, 0)
        (_, self.max_elements, self.count, self.record, self.label_offset, self.data_offset, self.max_level,
         self.entry_point, self.max_m, self.max_m0, self.m, _, _) = fields
        self.level0 = struct.calcsize(HEADER)
        self.levels, self.upper = [], []  # per element: top level, byte offset of its first upper list
        position = self.level0 + self.count * self.record
        for _ in range(self.count):
            (size,) = struct.unpack_from("<I", raw, position)
            self.levels.append(size // (4 * (1 + self.max_m)))
            self.upper.append(position + 4)
            position += 4 + size

    def level0_list(self, element: int) -> int:
        """Byte offset of an element's level-0 header (count), followed by its neighbour ids."""
        return self.level0 + element * self.record

    def upper_list(self, element: int, level: int) -> int:
        """Byte offset of an element's level-``level`` header (level >= 1)."""
        return self.upper[element] + (level - 1) * 4 * (1 + self.max_m)

    def u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.path.read_bytes(), offset)[0]

    def put_u32(self, offset: int, value: int) -> None:
        _patch(self.path, offset, struct.pack("<I", value))


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def _graph_folder(folder: Path, *, n: int = 3000, deleted: tuple[int, ...] = ()) -> Path:
    """A generation-like folder: index.hnsw, vectors.npy, ids.npy of ``n`` random unit vectors."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 3 + 5  # labels that are not the elements' positions
    graph = index.build_graph(vectors, ids, HnswConfig(M=M, ef_construction=40), threads=1)
    for label in deleted:
        graph.mark_deleted(int(label))
    graph.save_index(str(folder / "index.hnsw"))
    live = ~np.isin(ids, np.asarray(deleted, np.int64))
    np.save(folder / "vectors.npy", vectors[live])
    np.save(folder / "ids.npy", ids[live])
    return folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return _graph_folder(tmp_path_factory.mktemp("graph") / "gen-000001")


@pytest.fixture
def folder(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "gen-000001"))


def _load(folder: Path, *, dim: int = DIM, elements: int = 3000, config: HnswConfig | None = None):
    return index.load_graph(folder / "index.hnsw", dim, elements, 24, config=config)


# ------------------------------------------------------------------ sound files load


def test_a_sound_graph_loads_and_finds_its_own_vectors(folder):
    graph = _load(folder, config=HnswConfig(M=M, ef_construction=40))
    vectors, ids = np.load(folder / "vectors.npy"), np.load(folder / "ids.npy")
    found, scores = index.search_graph(graph, vectors[123], 5, len(ids), 24)
    assert found[0] == ids[123] and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert max(Layout(folder / "index.hnsw").levels) >= 2, "the fixture should exercise upper levels"


def test_a_graph_with_deleted_elements_and_spare_room_loads(tmp_path):
    # What an add after a remove writes: deleted marks, and max_elements one above the count.
    folder = _graph_folder(tmp_path / "gen-000002", n=500, deleted=(5, 8, 11, 302))
    vectors, ids = np.load(folder / "vectors.npy"), np.load(folder / "ids.npy")
    extra = np.full((1, DIM), 0.25, np.float32)
    graph = index.extend_graph(folder / "index.hnsw", DIM, 500, np.asarray([14], np.int64), extra,
                               np.asarray([9999], np.int64), HnswConfig(M=M, ef_construction=40), threads=1)
    graph.save_index(str(folder / "index.hnsw"))
    keep = ids != 14
    np.save(folder / "vectors.npy", np.concatenate([vectors[keep], extra]))
    np.save(folder / "ids.npy", np.concatenate([ids[keep], [9999]]))
    assert Layout(folder / "index.hnsw").max_elements == 502
    graph = _load(folder, elements=501)
    found, _ = index.search_graph(graph, extra[0], 1, 496, 24)
    assert found[0] == 9999


# ------------------------------------------------------------------ the graph's structure


def test_a_neighbour_beyond_the_graph_is_refused(folder):
    layout = Layout(folder / "index.hnsw")
    layout.put_u32(layout.level0_list(17) + 4, 3000)  # first level-0 neighbour of element 17
    with pytest.raises(KnowledgeBaseCorruptError, match="element 17 links to an element beyond the 3000"):
        _load(folder)


def test_a_level0_link_count_above_2m_is_refused(folder):
    layout = Layout(folder / "index.hnsw")
    layout.put_u32(layout.level0_list(40), 2 * M + 1)
    with pytest.raises(KnowledgeBaseCorruptError, match="element 40 has 17 level-0 links, at most 2M = 16"):
        _load(folder)


def test_unknown_flag_bits_are_refused(folder):
    layout = Layout(folder / "index.hnsw")
    layout.put_u32(layout.level0_list(3), layout.u32(layout.level0_list(3)) | (1 << 24))
    with pytest.raises(KnowledgeBaseCorruptError, match="element 3 has level-0 header"):
        _load(folder)


def test_an_entry_point_outside_the_graph_is_refused(folder):
    layout = Layout(folder / "index.hnsw")
    _patch(folder / "index.hnsw", 52, struct.pack("<I", 70000))  # enterpoint_node_
    with pytest.raises(KnowledgeBaseCorruptError, match="entry point 70000"):
        _load(folder)
    _patch(folder / "index.hnsw", 52, struct.pack("<I", layout.levels.index(0)))
    with pytest.raises(KnowledgeBaseCorruptError, match="not an element on the top level"):
        _load(folder)


def test_a_top_level_above_the_lists_is_refused(folder):
    layout = Layout(folder / "index.hnsw")
    _patch(folder / "index.hnsw", 48, struct.pack("<i", layout.max_level + 1))  # maxlevel_
    with pytest.raises(KnowledgeBaseCorruptError, match=f"top level is {layout.max_level + 1}"):
        _load(folder)


def test_upper_level_damage_is_refused(folder, pristine):
    layout = Layout(folder / "index.hnsw")
    high = next(e for e, level in enumerate(layout.levels) if level >= 2 and layout.u32(layout.upper_list(e, 2)))
    level2 = layout.upper_list(high, 2)
    layout.put_u32(level2 + 4, 3001)
    with pytest.raises(KnowledgeBaseCorruptError, match=f"element {high} links to an element beyond .* \\(level 2\\)"):
        _load(folder)
    # A neighbour without a level-2 list: hnswlib would follow a null pointer.
    layout.put_u32(level2 + 4, layout.levels.index(0))
    with pytest.raises(KnowledgeBaseCorruptError, match=f"element {high} links on level 2 to an element that has no"):
        _load(folder)
    shutil.copyfile(pristine / "index.hnsw", folder / "index.hnsw")
    layout.put_u32(level2, M + 1)
    with pytest.raises(KnowledgeBaseCorruptError, match=f"{M + 1} links on level 2, at most M = {M}"):
        _load(folder)


def test_a_size_word_that_breaks_the_upper_levels_is_refused(folder):
    layout = Layout(folder / "index.hnsw")
    element = layout.levels.index(1)
    layout.put_u32(layout.upper[element] - 4, 4 * (1 + M) + 4)
    with pytest.raises(KnowledgeBaseCorruptError, match=f"element {element} has {4 * (1 + M) + 4} bytes"):
        _load(folder)
    layout.put_u32(layout.upper[element] - 4, 4 * (1 + M) * 40)
    with pytest.raises(KnowledgeBaseCorruptError, match="upper-level links|after \\(or missing from\\)"):
        _load(folder)


def test_trailing_bytes_are_refused(folder):
    with open(folder / "index.hnsw", "ab") as handle:
        handle.write(b"\0" * 8)
    with pytest.raises(KnowledgeBaseCorruptError, match="bytes after"):
        _load(folder)


@pytest.mark.parametrize(("offset", "fmt", "value", "message"), [
    (8, "<Q", 1 << 40, "max_elements"),
    (16, "<Q", 3001, "holds 3001 vectors, the manifest says 3000"),
    (32, "<Q", 7, "label_offset 7"),
    (40, "<Q", 12, "offset_data 12"),
    (56, "<Q", 9, "maxM=9"),
    (80, "<d", 0.5, "level multiplier"),
    (0, "<Q", 4, "offsetLevel0"),
])
def test_header_fields_are_checked(folder, offset, fmt, value, message):
    _patch(folder / "index.hnsw", offset, struct.pack(fmt, value))
    with pytest.raises(KnowledgeBaseCorruptError, match=message):
        _load(folder)


def test_the_manifest_parameters_must_match_the_file(folder):
    with pytest.raises(KnowledgeBaseCorruptError, match="built for another dimension"):
        _load(folder, dim=32)
    with pytest.raises(KnowledgeBaseCorruptError, match="M=8, ef_construction=40, the manifest says M=16"):
        _load(folder, config=HnswConfig(M=16, ef_construction=40))


def test_a_header_shorter_than_96_bytes_is_refused(folder):
    (folder / "index.hnsw").write_bytes(b"\1" * 50)
    with pytest.raises(KnowledgeBaseCorruptError, match="shorter than the 96-byte hnswlib header"):
        _load(folder)


def test_an_empty_graph_loads(tmp_path):
    folder = tmp_path / "gen-000001"
    folder.mkdir()
    index.build_graph(np.empty((0, DIM), np.float32), np.empty(0, np.int64), HnswConfig()).save_index(
        str(folder / "index.hnsw"))
    np.save(folder / "vectors.npy", np.empty((0, DIM), np.float32))
    np.save(folder / "ids.npy", np.empty(0, np.int64))
    graph = _load(folder, elements=0)
    assert len(index.search_graph(graph, np.ones(DIM, np.float32), 3, 0, 24)[0]) == 0


# ------------------------------------------------------------------ the arrays beside it


def test_a_changed_id_is_refused(folder):
    ids = np.load(folder / "ids.npy")
    ids[100] += 1
    np.save(folder / "ids.npy", ids)
    with pytest.raises(KnowledgeBaseCorruptError, match="ids.npy: chunk ids differ from the labels"):
        _load(folder)


def test_ids_out_of_order_are_refused(folder):
    ids = np.load(folder / "ids.npy")
    ids[[10, 11]] = ids[[11, 10]]
    np.save(folder / "ids.npy", ids)
    with pytest.raises(KnowledgeBaseCorruptError, match="not ascending"):
        _load(folder)


def test_a_changed_vector_is_refused(folder):
    vectors = np.load(folder / "vectors.npy")
    vectors[2999, 3] = np.nextafter(vectors[2999, 3], np.float32(2))  # the smallest change there is
    np.save(folder / "vectors.npy", vectors)
    with pytest.raises(KnowledgeBaseCorruptError, match="vectors differ from those in index.hnsw"):
        _load(folder)


def test_nan_vectors_are_refused_even_when_the_graph_holds_them_too(folder):
    vectors = np.load(folder / "vectors.npy")
    vectors[1500, 0] = np.nan
    np.save(folder / "vectors.npy", vectors)
    layout = Layout(folder / "index.hnsw")
    _patch(folder / "index.hnsw", layout.level0_list(1500) + layout.data_offset, np.float32(np.nan).tobytes())
    with pytest.raises(KnowledgeBaseCorruptError, match="row 1500 holds NaN or infinity"):
        _load(folder)


@pytest.mark.parametrize(("name", "array", "message"), [
    ("vectors.npy", np.zeros((3000, DIM), np.float64), "dtype float64"),
    ("vectors.npy", np.zeros((3000, DIM + 1), np.float32), r"shape \(3000, 17\)"),
    ("vectors.npy", np.asfortranarray(np.zeros((3000, DIM), np.float32)), "Fortran order"),
    ("ids.npy", np.zeros(2999, np.int64), r"shape \(2999,\)"),
    ("ids.npy", np.zeros(3000, np.int32), "dtype int32"),
])
def test_npy_headers_must_match_the_graph(folder, name, array, message):
    np.save(folder / name, array)
    with pytest.raises(KnowledgeBaseCorruptError, match=message):
        _load(folder)


def test_a_npy_file_without_a_header_is_refused(folder):
    (folder / "ids.npy").write_bytes(b"PK\3\4 not an array")
    with pytest.raises(KnowledgeBaseCorruptError, match="ids.npy has no readable .npy header"):
        _load(folder)


def test_search_returns_what_it_reaches_when_most_elements_are_deleted(tmp_path):
    folder = _graph_folder(tmp_path / "gen-000001", n=300, deleted=tuple(int(5 + 3 * i) for i in range(290)))
    graph = _load(folder, elements=300)
    found, scores = index.search_graph(graph, np.load(folder / "vectors.npy")[0], 64, 10, 4)
    assert 0 < len(found) <= 10 and len(found) == len(scores)


# ------------------------------------------------------------------ through KnowledgeBase.open, in a child


def open_and_search(kb_dir: str, cache_dir: str, verify: str, answer) -> None:
    """Run in a child: open, search, and send how it went (a crash is the parent's to see)."""
    from engine.embedding.embedder import Embedder

    try:
        with KnowledgeBase.open(kb_dir, embedder=Embedder(cache_dir=cache_dir), verify=verify) as kb:
            hits = kb.search("How do I pair the pump with the hub?", 3).hits
        answer.send(("ok", ",".join(str(h.chunk_id) for h in hits)))
    except EngineError as error:
        answer.send((type(error).__name__, str(error)))


def _in_child(kb_dir: Path, embedder_dir: Path, verify: str) -> tuple[str, str]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=open_and_search, args=(str(kb_dir), str(embedder_dir.parent), verify, send))
    child.start()
    send.close()
    try:
        if receive.poll(120):
            return receive.recv()
        return "no answer", f"the child {'hung' if child.is_alive() else f'exited with {child.exitcode}'}"
    except EOFError:
        child.join(10)
        return "died", f"the child exited with {child.exitcode} (negative: killed by that signal)"
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)


def _rewrite(kb_dir: Path, name: str, data: bytes) -> None:
    """Replace a generation file and record its new size and sha256, so only structural checks can object."""
    path = kb_dir / "manifest.json"
    raw = json.loads(path.read_text())
    (kb_dir / raw["generation"] / name).write_bytes(data)
    raw["files"][name] = {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps(raw))


def _generation(kb_dir: Path) -> Path:
    return kb_dir / json.loads((kb_dir / "manifest.json").read_text())["generation"]


@pytest.mark.parametrize("verify", ["size", "full"])
def test_a_damaged_link_is_an_error_not_a_crash(kb_copy, embedder_dir, verify):
    # Every level-0 list's first neighbour points far outside the graph: the old code read
    # visited_array[1 << 30] in knn_query and died with SIGSEGV.
    layout = Layout(_generation(kb_copy) / "index.hnsw")
    raw = bytearray(layout.path.read_bytes())
    for element in range(layout.count):
        struct.pack_into("<II", raw, layout.level0_list(element), 1, 1 << 30)
    _rewrite(kb_copy, "index.hnsw", bytes(raw))
    kind, message = _in_child(kb_copy, embedder_dir, verify)
    assert kind == "KnowledgeBaseCorruptError", message
    assert "links to an element beyond" in message and "bakeoff index --rebuild" in message


@pytest.mark.parametrize("verify", ["size", "full"])
def test_damaged_arrays_are_errors_not_different_hits(kb_copy, embedder_dir, verify):
    folder = _generation(kb_copy)
    ids = np.load(folder / "ids.npy")
    ids[0] = ids[-1] + 100  # and out of order
    vectors = np.load(folder / "vectors.npy")
    vectors[1] = np.nan
    for name, array, expected in [("ids.npy", ids, "chunk ids"), ("vectors.npy", vectors, "NaN")]:
        backup = (folder / name).read_bytes()
        buffer = _npy_bytes(array)
        _rewrite(kb_copy, name, buffer)
        kind, message = _in_child(kb_copy, embedder_dir, verify)
        assert kind == "KnowledgeBaseCorruptError" and expected in message, message
        _rewrite(kb_copy, name, backup)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_a_damaged_npy_header_is_an_error_before_numpy_reads_it(kb_copy, embedder):
    # One flipped bit turned the header's closing brace into a character numpy's fallback
    # parser chokes on: it raised tokenize.TokenError from np.load.
    folder = _generation(kb_copy)
    for name in ("ids.npy", "vectors.npy"):
        raw = bytearray((folder / name).read_bytes())
        backup = bytes(raw)
        raw[raw.index(b"}")] ^= 0x01
        _rewrite(kb_copy, name, bytes(raw))
        with pytest.raises(KnowledgeBaseCorruptError, match=f"{name} has no readable .npy header"):
            KnowledgeBase.open(kb_copy, embedder=embedder, verify="size")
        _rewrite(kb_copy, name, backup)
