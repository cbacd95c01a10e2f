"""The hnswlib 0.8.0 index file, read and checked without hnswlib.

hnswlib trusts its file: a flipped byte in a neighbour id, a link count or the
entry point makes ``knn_query`` read outside its buffers and the process dies
with SIGSEGV, before Python can raise anything. So every open parses the file
here first and proves that hnswlib can only read inside what it allocates.

The layout (``HierarchicalNSW::saveIndex``), native byte order (little-endian here)::

    header, 96 bytes    offsetLevel0_ u64, max_elements_ u64, cur_element_count u64,
                        size_data_per_element_ u64, label_offset_ u64, offsetData_ u64,
                        maxlevel_ i32, enterpoint_node_ u32, maxM_ u64, maxM0_ u64, M_ u64,
                        mult_ f64, ef_construction_ u64
    level 0             cur_element_count fixed-size records of size_data_per_element_ bytes:
                        u32 header (bits 0-15 link count, bit 16 the deleted mark),
                        maxM0_ u32 neighbour ids, dim f32 values, u64 label
    upper levels        per element: u32 byte size, then level x (u32 header, maxM_ u32 ids)

The checks are vectorised over the level-0 records (NumPy over a read-only memory
map); only the per-element sizes of the upper levels need a Python loop, one
step per element. At 100k elements of 384 dims, M=16 (a 168 MB file) the whole
check takes 45-60 ms on one core, against 250-330 ms for hnswlib's own load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import KnowledgeBaseCorruptError
from engine.kb.store import REBUILD_HINT

HEADER = np.dtype([
    ("offset_level0", "<u8"), ("max_elements", "<u8"), ("count", "<u8"), ("size_per_element", "<u8"),
    ("label_offset", "<u8"), ("offset_data", "<u8"), ("max_level", "<i4"), ("entry_point", "<u4"),
    ("max_m", "<u8"), ("max_m0", "<u8"), ("m", "<u8"), ("mult", "<f8"), ("ef_construction", "<u8"),
])
#: hnswlib caps M at 10000, and a level-0 link count must fit its 16 bits (2 * M).
MAX_M = 10_000
_DELETED = 1 << 16  # DELETE_MARK (0x01) in the third byte of a level-0 header
_NO_ENTRY_POINT = 0xFFFF_FFFF  # enterpoint_node_ = -1 in an unsigned 32-bit id


@dataclass(frozen=True, eq=False)
class HnswFile:
    """A checked hnswlib index file, as arrays over a read-only memory map of it.

    Attributes:
        count: elements in the graph (live and marked deleted).
        M: the graph's out-degree parameter (level 0 holds up to 2 * M links).
        ef_construction: the build-time candidate list size the file records.
        labels: uint64 label (chunk id) of each element, in insertion order.
        deleted: bool per element: marked deleted.
        data: float32 ``(count, dim)`` vectors the graph stores.
    """

    count: int
    M: int
    ef_construction: int
    labels: np.ndarray
    deleted: np.ndarray
    data: np.ndarray

    @classmethod
    def read(cls, path: Path, *, dim: int, elements: int) -> HnswFile:
        """Parse ``path`` and check that hnswlib can load and search it without reading out of bounds.

        Checked: the header against ``dim`` and ``elements`` (the manifest's), hnswlib's own
        invariants between header fields, the file length the header implies, every link
        count (<= 2M at level 0, <= M above) and neighbour id (< element count), that a
        neighbour at level ``l`` has a level-``l`` list, and the entry point and top level.
        O(file), vectorised: 45-60 ms for 100k elements of 384 dims on one core.

        Raises:
            KnowledgeBaseCorruptError: naming the first field or structure that is wrong.
        """
        size = path.stat().st_size
        if size < HEADER.itemsize:
            _corrupt(path, f"is {size} bytes, shorter than the {HEADER.itemsize}-byte hnswlib header")
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        h = raw[:HEADER.itemsize].view(HEADER)[0]
        count, m = int(h["count"]), int(h["m"])
        if int(h["offset_level0"]) != 0:
            _corrupt(path, f"has offsetLevel0 {int(h['offset_level0'])}, hnswlib always writes 0")
        if count != elements:
            _corrupt(path, f"holds {count} vectors, the manifest says {elements}")
        if not 2 <= m <= MAX_M or int(h["max_m"]) != m or int(h["max_m0"]) != 2 * m:
            _corrupt(path, f"has M={m}, maxM={int(h['max_m'])}, maxM0={int(h['max_m0'])}: "
                           f"hnswlib writes maxM = M and maxM0 = 2M, 2 <= M <= {MAX_M}")
        if not math.isclose(float(h["mult"]), 1 / math.log(m), rel_tol=1e-9):
            _corrupt(path, f"has level multiplier {float(h['mult'])!r}, hnswlib writes 1/ln(M) = {1 / math.log(m)!r}")
        if int(h["ef_construction"]) < m:
            _corrupt(path, f"has ef_construction {int(h['ef_construction'])} < M={m}")
        links0 = 4 + 8 * m  # level-0 header + maxM0 ids, bytes
        expected = {"offset_data": links0, "label_offset": links0 + 4 * dim, "size_per_element": links0 + 4 * dim + 8}
        for name, value in expected.items():
            if int(h[name]) != value:
                _corrupt(path, f"has {name} {int(h[name])}, {value} for {dim}-dimensional vectors with M={m} "
                               f"(built for another dimension, or damaged)")
        # At most count + 1 for files this engine writes (one spare slot after an extend);
        # hnswlib allocates max_elements records on load, so a damaged value must not pass.
        if not count <= int(h["max_elements"]) <= 2 * count + 1:
            _corrupt(path, f"has max_elements {int(h['max_elements'])} for {count} vectors")
        record = expected["size_per_element"]
        level0_end = HEADER.itemsize + count * record
        if level0_end + 4 * count > size or (size - level0_end) % 4:
            _corrupt(path, f"is {size} bytes, too short or misaligned for {count} records of {record} bytes")
        words = raw[HEADER.itemsize:level0_end].view("<u4").reshape(count, record // 4)
        tail = raw[level0_end:].view("<u4")
        deleted = _check_level0(path, words, m, count)
        levels = _walk_levels(path, tail, m, count)
        if count:
            _check_top(path, levels, int(h["max_level"]), int(h["entry_point"]))
            _check_upper_links(path, tail, levels, m, count)
        elif (int(h["max_level"]), int(h["entry_point"])) != (-1, _NO_ENTRY_POINT):
            # An insert into an empty graph that claims an entry point would start from it.
            _corrupt(path, f"is empty but has top level {int(h['max_level'])} and entry point {int(h['entry_point'])}")
        label = (links0 + 4 * dim) // 4
        labels = words[:, label].astype(np.uint64) | (words[:, label + 1].astype(np.uint64) << np.uint64(32))
        data = words[:, 1 + 2 * m:1 + 2 * m + dim].view("<f4")
        return cls(count, m, int(h["ef_construction"]), labels, deleted, data)


def _check_level0(path: Path, words: np.ndarray, m: int, count: int) -> np.ndarray:
    """Level-0 link counts and neighbour ids; returns the deleted marks."""
    header = words[:, 0]
    if np.any(header >> 17):
        bad = int(np.flatnonzero(header >> 17)[0])
        _corrupt(path, f"element {bad} has level-0 header {int(header[bad]):#010x} (unknown flag bits)")
    links = header & 0xFFFF
    if np.any(links > 2 * m):
        bad = int(np.flatnonzero(links > 2 * m)[0])
        _corrupt(path, f"element {bad} has {int(links[bad])} level-0 links, at most 2M = {2 * m}")
    neighbours = words[:, 1:1 + 2 * m]
    used = np.arange(2 * m, dtype=np.uint32) < links[:, None]
    out_of_range = used & (neighbours >= count)
    if out_of_range.any():
        bad = int(np.flatnonzero(out_of_range.any(axis=1))[0])
        _corrupt(path, f"element {bad} links to an element beyond the {count} in the graph (level 0)")
    return (header & _DELETED).astype(bool)


def _walk_levels(path: Path, tail: np.ndarray, m: int, count: int) -> np.ndarray:
    """Each element's top level, from the byte sizes of its upper-level link lists."""
    block = 4 * (1 + m)
    sizes = memoryview(tail.data).cast("B").cast("I")  # plain ints: ~10x faster to index than NumPy scalars
    levels = np.zeros(count, np.int64)
    end, position = len(sizes), 0
    for element in range(count):
        if position >= end:
            _corrupt(path, f"ends inside the upper-level links (element {element} of {count})")
        nbytes = sizes[position]
        if nbytes:
            if nbytes % block:
                _corrupt(path, f"element {element} has {nbytes} bytes of upper-level links, "
                               f"not a multiple of {block}")
            levels[element] = nbytes // block
        position += 1 + nbytes // 4
    if position != end:
        _corrupt(path, f"has {4 * (end - position):+d} bytes after (or missing from) its last link list")
    return levels


def _check_top(path: Path, levels: np.ndarray, max_level: int, entry_point: int) -> None:
    """hnswlib's search starts at the entry point on the top level: both must agree with the lists."""
    top = int(levels.max())
    if max_level != top:
        _corrupt(path, f"says its top level is {max_level}, its link lists reach level {top}")
    if entry_point >= len(levels) or levels[entry_point] != top:
        _corrupt(path, f"has entry point {entry_point}, not an element on the top level {top}")


def _check_upper_links(path: Path, tail: np.ndarray, levels: np.ndarray, m: int, count: int) -> None:
    """Every upper-level list: count <= M, neighbours exist and reach the list's level."""
    owners = np.flatnonzero(levels)
    if not len(owners):
        return
    per_level = 1 + m
    # Each element's upper section is its size word plus level * (1 + M) words.
    starts = np.cumsum(1 + levels * per_level) - (1 + levels * per_level)
    starts = starts[owners]
    n_lists = levels[owners]
    owner = np.repeat(owners, n_lists)
    level = np.arange(int(n_lists.sum())) - np.repeat(np.cumsum(n_lists) - n_lists, n_lists) + 1
    first = np.repeat(starts + 1, n_lists) + (level - 1) * per_level
    lists = tail[first[:, None] + np.arange(per_level)]
    links = lists[:, 0]
    if np.any(links > m):
        bad = int(np.flatnonzero(links > m)[0])
        _corrupt(path, f"element {int(owner[bad])} has {int(links[bad])} links on level {int(level[bad])}, "
                       f"at most M = {m}")
    used = np.arange(m) < links[:, None]
    neighbours = lists[:, 1:]
    beyond = used & (neighbours >= count)
    if beyond.any():
        bad = int(np.flatnonzero(beyond.any(axis=1))[0])
        _corrupt(path, f"element {int(owner[bad])} links to an element beyond the {count} in the graph "
                       f"(level {int(level[bad])})")
    too_low = used & (levels[np.where(used, neighbours, 0)] < level[:, None])
    if too_low.any():
        bad = int(np.flatnonzero(too_low.any(axis=1))[0])
        _corrupt(path, f"element {int(owner[bad])} links on level {int(level[bad])} to an element "
                       f"that has no list on that level")


def _corrupt(path: Path, what: str) -> None:
    raise KnowledgeBaseCorruptError(f"{path} {what}: {REBUILD_HINT}")
