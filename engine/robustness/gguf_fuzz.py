"""Fuzz of GGUF files: a damaged model or adapter header loads or fails typed, in a child process.

Each case truncates a file or changes one byte of it, mostly in its header fields
(their first bytes: lengths, types, counts, dimensions), then loads it in a fresh
Python process with an address-space limit, so that a damaged count cannot make it
allocate without bound. The load must end in a successful generation, a refusal by
``engine.models.gguf_check``, or a typed error from llama.cpp: never a signal, a hang or
another exception; and a truncated file must never load.

The header's field positions come from the ``gguf`` package (the ``[test]`` extra);
without it the fuzz is skipped. Seeded: one case stream per file.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.robustness.kb_fuzz import FuzzReport

ADDRESS_SPACE = 4 << 30  # RLIMIT_AS of each child: a damaged count cannot make it allocate more
CASE_TIMEOUT_S = 60
LOADED, TYPED_BY_CHECK, TYPED_BY_LLAMA = "loaded", "refused by gguf_check", "refused by llama.cpp (typed)"
CHILD = textwrap.dedent("""
    import resource, sys, traceback
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    target, model, adapter = sys.argv[1:4]
    from engine.errors import EngineError
    try:
        from engine.generation.generator import Generator
        gen = Generator(model, n_ctx=256, n_threads=1)
        if target == "adapter":
            gen.load_adapter(adapter, name="fuzz")
        gen.generate("Hi", max_tokens=2, adapters={{"fuzz": 1.0}} if target == "adapter" else None)
    except EngineError as exc:
        print(type(exc).__name__, exc, file=sys.stderr)
        sys.exit(10)
    except BaseException:
        traceback.print_exc()
        sys.exit(11)
""").format(limit=ADDRESS_SPACE)


@dataclass(frozen=True)
class Case:
    """One damage of ``target`` ("model" or "adapter"): ``flip`` (XOR the byte at ``offset`` with
    ``value``) or ``truncate`` (to ``offset`` bytes)."""

    target: str
    change: str
    offset: int
    value: int = 0


def hot_spots(path: Path) -> tuple[list[tuple[int, int]], int]:
    """The (start, end) of every header field and tensor info, and where the tensor data starts.

    Raises:
        ImportError: the ``gguf`` package is not installed.
    """
    import gguf

    reader = gguf.GGUFReader(str(path))
    spans = [(f.offset, f.offset + sum(p.nbytes for p in f.parts)) for f in reader.fields.values()]
    spans += [(t.field.offset, t.field.offset + sum(p.nbytes for p in t.field.parts)) for t in reader.tensors]
    return spans, reader.data_offset


def cases(rng: random.Random, target: str, size: int, spans: list[tuple[int, int]], data_offset: int) -> Iterator[Case]:
    """Endless seeded cases for one file, alternating flips and truncations, mostly in the header."""
    fixed = [0, 3, 4, 23, 24, data_offset - 1, data_offset, size - 1]
    while True:
        start, end = rng.choice(spans)
        where = rng.random()
        if where < 0.6:  # the first bytes of a field: lengths, types, counts, dims
            at = start + min(rng.randrange(24), end - start - 1)
        elif where < 0.9:
            at = rng.randrange(start, end)
        else:
            at = rng.randrange(data_offset)
        yield Case(target, "flip", at, rng.randrange(1, 256))
        cut = fixed.pop() if fixed else (rng.randrange(size) if rng.random() < 0.2 else rng.choice(spans)[0]
                                         + rng.randrange(-8, 9))
        yield Case(target, "truncate", max(0, min(cut, size - 1)))


class Lane:
    """One worker's copies of the files, changed in place for a case and restored."""

    def __init__(self, folder: Path, originals: dict[str, bytes], base_model: Path) -> None:
        folder.mkdir()
        self.folder, self.originals, self.base_model = folder, originals, base_model
        self.files = {target: folder / f"{target}.gguf" for target in originals}
        for target, data in originals.items():
            self.files[target].write_bytes(data)

    def run(self, case: Case) -> tuple[Case, str, str]:
        """``(case, outcome, detail)``: outcome is one of the three good ones, ``signal N``, ``exit N`` or ``hang``."""
        path = self.files[case.target]
        original = self.originals[case.target]
        if case.change == "flip":
            with open(path, "r+b") as handle:
                handle.seek(case.offset)
                handle.write(bytes([original[case.offset] ^ case.value]))
        else:
            path = self.folder / f"cut-{case.target}.gguf"
            path.write_bytes(original[:case.offset])
        model = path if case.target == "model" else self.base_model
        adapter = path if case.target == "adapter" else self.files.get("adapter", path)
        try:
            done = subprocess.run([sys.executable, "-c", CHILD, case.target, str(model), str(adapter)],
                                  capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
            detail = done.stderr.strip()[-600:]
            if done.returncode == 10:
                outcome = TYPED_BY_CHECK if "not a valid GGUF file" in detail else TYPED_BY_LLAMA
            elif done.returncode == 0:
                outcome = LOADED
            else:
                outcome = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        except subprocess.TimeoutExpired:
            outcome, detail = "hang", f"no result after {CASE_TIMEOUT_S} s"
        finally:
            if case.change == "flip":
                with open(self.files[case.target], "r+b") as handle:
                    handle.seek(case.offset)
                    handle.write(original[case.offset:case.offset + 1])
        return case, outcome, detail


def bad(results: list[tuple[Case, str, str]]) -> list[str]:
    """The failed runs: any other outcome than the three good ones, or a truncated file that loaded."""
    return [f"{case}: {outcome} {detail[-300:]}" for case, outcome, detail in results
            if outcome not in (LOADED, TYPED_BY_CHECK, TYPED_BY_LLAMA)
            or (case.change == "truncate" and outcome == LOADED)]


def fuzz_gguf(files: dict[str, Path], work: Path, *, seconds: float, seed: int, lanes: int = 2) -> FuzzReport:
    """Load damaged copies of ``files`` (``{"model": ..., "adapter": ...}``, the adapter optional)
    in ``lanes`` child processes at a time for ``seconds`` (see the module docstring).

    ``work`` is a folder for the copies. Returns the counts of outcomes; skipped without ``gguf``.
    """
    try:
        spots = {target: hot_spots(path) for target, path in files.items()}
    except ImportError:
        return FuzzReport("GGUF", seed, seconds, 0, 0, {}, (), "needs the gguf package (the [test] extra)")
    originals = {target: path.read_bytes() for target, path in files.items()}
    streams = [cases(random.Random(f"{seed}-{target}"), target, len(originals[target]), *spots[target])
               for target in files]  # one rng per stream: the lanes run concurrently
    lanes_ = [Lane(work / f"lane{i}", originals, files["model"]) for i in range(lanes)]
    results: list[tuple[Case, str, str]] = []
    deadline = time.monotonic() + seconds

    taking = threading.Lock()  # lanes may share a stream (more lanes than files)

    def work_on(lane: Lane, stream: Iterator[Case]) -> None:
        while not results or time.monotonic() < deadline:
            with taking:
                case = next(stream)
            results.append(lane.run(case))

    with ThreadPoolExecutor(lanes) as pool:
        for future in [pool.submit(work_on, lane, streams[i % len(streams)]) for i, lane in enumerate(lanes_)]:
            future.result()
    counts = Counter(f"{case.target} {case.change}: {outcome}" for case, outcome, _ in results)
    return FuzzReport("GGUF", seed, seconds, len(results), len(results), dict(sorted(counts.items())),
                      tuple(bad(results)))
