"""Chunk states (precomputed K/V of prompt blocks) kept in RAM and on disk, within byte budgets.

A state belongs to everything that shaped its K/V: the model file, the adapters and
their scales (a LoRA on the K/V projections changes them), the KV cache type, flash
attention, the llama.cpp build, and the shared prefix it was computed after. Those
make a :class:`StateKey` (a folder per key on disk); inside it a state is named by
the sha256 of its block's text, so it is content-addressed: a changed chunk has
another name, and a state is never used for text it was not computed from. That is
what keeps states consistent with the knowledge base's generations without writing
them into a generation: a reader of any generation finds exactly the states of the
chunks it reads, and :meth:`ChunkKvCache.prune` drops those no chunk uses any more.

Files (``DIR/<key>/<text-sha>.kv``) carry a header (format version, the key's full
digest and its fields, token count, position, a hash of the token ids) and the state's
sha256; a file that is truncated, flipped, malformed, of another format version, or
made for another key, tokens or position is detected when read, counted in
``stats().rejected``, deleted, and recomputed by the caller.

The folder is not trusted further than its owner. Only a regular file is read (not a
symlink, FIFO, device or folder), owned by this user (or root) and writable by no one
else, and no larger than the largest state the cache keeps; anything else is refused
the same way, before a byte of it is read. Another local user who can write the folder
can therefore make states refused, never used. A file forged by the cache's own user
(a header rewritten, the sha256 recomputed) cannot be told from a real one: nothing
in a folder that user controls could tell them apart.

Each write goes through a temporary file of its own, so writers of the same state do
not collide. ``put(..., wait=False)`` (what an answer computing its states uses) keeps
the state in RAM at once and leaves the file to a writer thread, off the answer's
critical path; :meth:`ChunkKvCache.flush` waits for those writes, and ``clear``,
``discard`` and ``prune`` flush first (so a cleared cache stays empty), as does the
interpreter's exit (the writer is not a daemon).
A write that fails (a full disk, a folder in the file's place) costs that
state its file only: it stays in RAM, the failure is counted in
``stats().failed_writes`` and said once. A folder that cannot be written at all is
used as RAM only, with one warning.

Budgets: SmolLM2-135M's f16 K/V take 23 KB per token (30 layers x 3 KV heads x 64
dims x K,V x 2 bytes, plus 12 bytes of cell metadata), so a 200-token chunk is about
4.6 MB; the defaults (512 MiB RAM, 4 GiB disk) hold ~110 and ~900 such chunks.
Least recently used states go first.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError
from engine.generation.kv_file import (
    CachedState,
    StateKey,
    decode,
    encode,
    largest_file,
    may_read,
    read_state_file,
    remove_refused,
    text_sha256,
    write_state_file,
)

DEFAULT_RAM_BYTES = 512 * 2**20

DEFAULT_DISK_BYTES = 4 * 2**30


@dataclass(frozen=True)
class KvCacheStats:
    """What the cache did since it was made."""

    ram_hits: int
    disk_hits: int
    misses: int
    rejected: int  # files refused: damaged, forged, not a plain file of ours, or made for another key (deleted;
    # the caller recomputes)
    evictions: int  # states dropped from RAM or disk to stay within budget
    stored: int
    ram_bytes: int
    disk_bytes: int
    disk_enabled: bool

    states: int = 0  # held in RAM
    state_tokens: int = 0  # tokens of the states held in RAM
    failed_writes: int = 0  # states that could not be written to disk (each kept in RAM only)

    def state_sizes(self) -> dict[str, float]:
        """States in RAM, and their mean bytes per state and per token."""
        return {"states": self.states, "bytes_per_state": self.ram_bytes / self.states if self.states else 0.0,
                "bytes_per_token": self.ram_bytes / self.state_tokens if self.state_tokens else 0.0}

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0 when nothing was looked up)."""
        lookups = self.ram_hits + self.disk_hits + self.misses
        return (self.ram_hits + self.disk_hits) / lookups if lookups else 0.0


_identities_lock = threading.Lock()


class ChunkKvCache:
    """A two-level (RAM, disk) LRU store of chunk states.

    Args:
        directory: where states are kept on disk (e.g. ``KB_DIR/kv``); None for RAM only.
        ram_bytes, disk_bytes: budgets; least recently used states are dropped beyond them.

    Thread-safe: one lock guards the indexes; file reads and writes happen outside it.

    Raises:
        InputError: a budget that is not an integer >= 0.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, ram_bytes: int = DEFAULT_RAM_BYTES,
                 disk_bytes: int = DEFAULT_DISK_BYTES) -> None:
        for name, value in (("ram_bytes", ram_bytes), ("disk_bytes", disk_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{name} must be an integer >= 0, got {value!r}")
        self.ram_budget = ram_bytes
        self.disk_budget = disk_bytes
        # The largest state file this cache writes or reads. A state is used from memory and the cache
        # never holds more than its RAM budget, nor writes a file over its disk budget, so a bigger file is
        # not one of its states: it is refused by its size, before it is read (a 20 GB sparse file would
        # otherwise be read whole). Without a RAM budget (ram_bytes=0) the disk budget bounds it alone.
        self._largest_state = min(ram_bytes, disk_bytes) if ram_bytes else disk_bytes
        self._largest_file = largest_file(self._largest_state)
        self._lock = threading.Lock()
        self._ram: OrderedDict[tuple[str, str], CachedState] = OrderedDict()
        self._ram_size = 0
        self._disk: OrderedDict[Path, int] = OrderedDict()  # file -> bytes, least recently used first
        self._disk_size = 0
        self._counts = dict(ram_hits=0, disk_hits=0, misses=0, rejected=0, evictions=0, stored=0, failed_writes=0)
        self._pending: deque[tuple[StateKey, tuple[str, str], tuple[int, ...], CachedState]] = deque()
        self._writer: threading.Thread | None = None  # runs while writes are pending, then ends
        self._idle = threading.Condition(self._lock)
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None and not self._writable(self.directory):
            warnings.warn(f"the chunk-KV cache folder '{self.directory}' is not writable: chunk states are kept in "
                          "RAM only (make the folder writable, or pass another one)", RuntimeWarning, stacklevel=2)
            self.directory = None
        if self.directory is not None:
            self._scan()

    def __repr__(self) -> str:
        return f"ChunkKvCache({str(self.directory) if self.directory else None!r})"

    # Lookups ----------------------------------------------------------------------

    def get(self, key: StateKey, text: str, tokens: Sequence[int], position: int) -> CachedState | None:
        """The state of the block ``text`` (tokenized as ``tokens``) after ``key``'s prefix, or None."""
        name = (key.digest, text_sha256(text))
        with self._lock:
            found = self._ram.get(name)
            if found is not None:
                self._ram.move_to_end(name)
                self._counts["ram_hits"] += 1
                if self.directory is not None and self._path(name) in self._disk:
                    self._disk.move_to_end(self._path(name))  # recently used on disk too
                return found
        found = self._read(key, name, tokens, position)
        with self._lock:
            self._counts["disk_hits" if found is not None else "misses"] += 1
        if found is not None:
            self._keep_in_ram(name, found)
        return found

    def put(self, key: StateKey, text: str, tokens: Sequence[int], position: int, state: bytes, *,
            wait: bool = True) -> CachedState:
        """Keep a freshly computed state (in RAM, and on disk when there is a folder).

        ``wait=False`` returns once the state is in RAM and writes its file on the cache's
        writer thread (see :meth:`flush`); a failed write is counted and said the same way.
        """
        name = (key.digest, text_sha256(text))
        found = CachedState(bytes(state), len(tokens), int(position))
        self._keep_in_ram(name, found)
        with self._lock:
            self._counts["stored"] += 1
            if self.directory is not None and not wait:
                self._pending.append((key, name, tuple(tokens), found))
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_pending, name="chunk-kv-writer")
                    self._writer.start()
                return found
        if self.directory is not None:
            self._write(key, name, tokens, found)
        return found

    def flush(self) -> None:
        """Wait until every state handed over with ``put(..., wait=False)`` so far has its file (or failed)."""
        with self._idle:
            self._idle.wait_for(lambda: self._writer is None)

    def stats(self) -> KvCacheStats:
        """Counts since the cache was made, and what it holds now."""
        with self._lock:
            return KvCacheStats(**self._counts, ram_bytes=self._ram_size, disk_bytes=self._disk_size,
                                disk_enabled=self.directory is not None, states=len(self._ram),
                                state_tokens=sum(s.n_tokens for s in self._ram.values()))

    def clear(self) -> None:
        """Forget every state in RAM and delete every state file (e.g. to measure a cold cache)."""
        self.flush()
        with self._lock:
            self._ram.clear()
            self._ram_size = 0
            for file in list(self._disk):
                self._forget_file(file)

    def discard(self, key: StateKey, texts: Iterable[str]) -> None:
        """Forget the states of ``texts`` after ``key``'s prefix, in RAM and on disk, counted as rejected:
        for states the native core refused although their file passed every check here (a file
        forged with a valid header and checksum), so the next ask recomputes them instead of failing."""
        names = {(key.digest, text_sha256(t)) for t in texts}
        self.flush()
        with self._lock:
            for name in names:
                if name in self._ram:
                    self._ram_size -= len(self._ram.pop(name).state)
                    self._counts["rejected"] += 1
                if self.directory is not None and self._path(name) in self._disk:
                    self._forget_file(self._path(name))
            if self.directory is not None:  # a file not (yet) in the index: delete it too
                for name in names:
                    self._path(name).unlink(missing_ok=True)

    def prune(self, key: StateKey, keep_texts: Iterable[str]) -> int:
        """Delete ``key``'s states whose text is not in ``keep_texts`` (chunks no longer indexed); returns how many."""
        keep = {text_sha256(t) for t in keep_texts}
        removed = 0
        self.flush()
        with self._lock:
            for name in [n for n in self._ram if n[0] == key.digest and n[1] not in keep]:
                self._ram_size -= len(self._ram.pop(name).state)
            if self.directory is None:
                return 0
            folder = self.directory / key.digest
            for file in [f for f in self._disk if f.parent == folder and f.stem not in keep]:
                self._forget_file(file)
                removed += 1
        return removed

    # RAM ----------------------------------------------------------------------------

    def _keep_in_ram(self, name: tuple[str, str], found: CachedState) -> None:
        size = len(found.state)
        with self._lock:
            old = self._ram.pop(name, None)
            if old is not None:
                self._ram_size -= len(old.state)
            if size > self.ram_budget:
                return
            self._ram[name] = found
            self._ram_size += size
            while self._ram_size > self.ram_budget:
                _, dropped = self._ram.popitem(last=False)
                self._ram_size -= len(dropped.state)
                self._counts["evictions"] += 1

    # Disk ---------------------------------------------------------------------------

    @staticmethod
    def _writable(directory: Path) -> bool:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return True
        except OSError:
            return False

    def _scan(self) -> None:
        assert self.directory is not None
        files = []
        for file in self.directory.glob("*/*.kv"):
            try:
                info = file.lstat()
            except OSError:
                continue
            if may_read(info, self._largest_file):  # the others are refused when read
                files.append((info.st_mtime_ns, file, info.st_size))
        for _, file, size in sorted(files):
            self._disk[file] = size
            self._disk_size += size

    def _path(self, name: tuple[str, str]) -> Path:
        assert self.directory is not None
        return self.directory / name[0] / f"{name[1]}.kv"

    def _read(self, key: StateKey, name: tuple[str, str], tokens: Sequence[int], position: int) -> CachedState | None:
        if self.directory is None:
            return None
        file = self._path(name)
        try:
            data, identity = read_state_file(file, self._largest_file)
        except FileNotFoundError:
            return None
        except OSError:  # not a plain file of ours, or unreadable
            data, identity = None, None
        found = None if data is None else decode(data, key, tokens, position)
        with self._lock:
            if found is None:
                self._counts["rejected"] += 1
                self._disk_size -= self._disk.pop(file, 0)
            elif file in self._disk:
                self._disk.move_to_end(file)
        if found is None:
            remove_refused(file, identity)
        else:
            with contextlib.suppress(OSError):
                os.utime(file, follow_symlinks=False)  # least recently used survives a restart
        return found

    def _write_pending(self) -> None:
        """The writer thread: writes the pending states in order, and ends when there are none.

        It says it has ended under the same hold of the lock in which it found nothing pending:
        otherwise a ``put`` in between would queue a state, see a writer still running and start
        none, and that state's file would never be written."""
        while True:
            with self._lock:
                if not self._pending:
                    self._writer = None
                    self._idle.notify_all()
                    return
                key, name, tokens, found = self._pending.popleft()
            try:
                self._write(key, name, tokens, found)
            except BaseException:  # something unforeseen: the next put starts a writer; flush() must not hang
                with self._lock:
                    self._writer = None
                    self._idle.notify_all()
                raise

    def _write(self, key: StateKey, name: tuple[str, str], tokens: Sequence[int], found: CachedState) -> None:
        data = encode(key, tokens, found)
        if len(data) > min(self.disk_budget, self._largest_file):
            return
        file = self._path(name)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            write_state_file(file, data)
        except OSError as error:
            with self._lock:
                self._counts["failed_writes"] += 1
                first = self._counts["failed_writes"] == 1
            if first:
                warnings.warn(f"cannot write the chunk state '{file}' ({error}): it is kept in RAM only; other "
                              "states are still written, and failures are counted in stats().failed_writes",
                              RuntimeWarning, stacklevel=4)
            return
        with self._lock:
            old = self._disk.pop(file, 0)
            self._disk[file] = len(data)
            self._disk_size += len(data) - old
            while self._disk_size > self.disk_budget and len(self._disk) > 1:
                oldest = next(iter(self._disk))
                self._forget_file(oldest)
                self._counts["evictions"] += 1

    def _forget_file(self, file: Path) -> None:
        """Delete a state file and its index entry (caller holds the lock)."""
        self._disk_size -= self._disk.pop(file, 0)
        try:
            file.unlink()
        except OSError:
            pass
