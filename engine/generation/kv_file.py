"""A chunk state as a file: what it is keyed by, the file format, and reading only what can be a state.

``DIR/<key>/<text-sha>.kv`` holds a prefix (magic, format version, header length), a JSON header
(format version, the key's full digest and its fields, token count, position, a hash of the
token ids, the state's sha256) and the state. :func:`decode` accepts a file only when its header
is exactly what :func:`encode` writes for the key, tokens and position asked for.
:func:`read_state_file` reads only a regular file of ours of plausible size (see
:mod:`engine.generation.kv_cache` for why); :func:`write_state_file` writes through a
temporary file of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from engine._files import move_into_place, sha256_file

_MAGIC = b"BKKV"

# 2: the header names the key's full digest. 3: states computed several per batch, each chunk's cells on a tile
# boundary (Generator.chunk_states), which differ from version 2's one-by-one states in their last bits: a file of
# another version is a miss, replaced, so the states in use are all computed one way.
_VERSION = 3

_PREFIX = struct.Struct("<4sII")  # magic, format version, header length

HEADER_MAX = 64 * 2**10  # the JSON header: a few hundred bytes, more with many adapters


@dataclass(frozen=True)
class StateKey:
    """Everything a chunk state's K/V depends on besides its own tokens."""

    model_sha256: str
    adapters: tuple[tuple[str, float], ...]  # (adapter file sha256, scale), in attach order
    kv_type: str
    flash_attn: str  # "auto", "on" or "off", as the context was made
    build: str  # the llama.cpp build the states come from
    prefix_sha256: str  # of the shared prefix's token ids

    @property
    def full_digest(self) -> str:
        """sha256 of all the fields: what a state file says it was made for."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def digest(self) -> str:
        """A folder name for this key."""
        return self.full_digest[:24]


@dataclass(frozen=True)
class CachedState:
    """A chunk's state and the tokens and position it was computed for."""

    state: bytes
    n_tokens: int
    position: int


def text_sha256(text: str) -> str:
    """The name of a block's state: the sha256 of the block's text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokens_sha256(tokens: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()


_identities: dict[tuple[str, int, int, int], str] = {}
_identities_lock = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a model or adapter file, hashed once per process while its size, mtime and inode stay."""
    file = Path(path).resolve()
    info = file.stat()
    key = (str(file), info.st_size, info.st_mtime_ns, info.st_ino)
    with _identities_lock:
        known = _identities.get(key)
    if known is None:
        known = sha256_file(file)
        with _identities_lock:
            _identities[key] = known
    return known


def header(key: StateKey, tokens: Sequence[int], position: int, state: bytes) -> dict:
    """What a state file says it was made for, and its state's size and sha256."""
    return dict(asdict(key), key_digest=key.full_digest, n_tokens=len(tokens), position=int(position),
                tokens_sha256=tokens_sha256(tokens), state_bytes=len(state),
                state_sha256=hashlib.sha256(state).hexdigest())


def encode(key: StateKey, tokens: Sequence[int], found: CachedState) -> bytes:
    encoded = json.dumps(header(key, tokens, found.position, found.state), sort_keys=True).encode()
    return _PREFIX.pack(_MAGIC, _VERSION, len(encoded)) + encoded + found.state


def decode(data: bytes, key: StateKey, tokens: Sequence[int], position: int) -> CachedState | None:
    """The state in ``data`` if it is whole and made for exactly this key, tokens and position; else None."""
    if len(data) < _PREFIX.size:
        return None
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != _MAGIC or version != _VERSION or length > HEADER_MAX or _PREFIX.size + length > len(data):
        return None
    try:
        found = json.loads(data[_PREFIX.size:_PREFIX.size + length])
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        return None
    state = data[_PREFIX.size + length:]
    # The writer's header after a JSON round trip (tuples become lists): every field must be equal, so a
    # header of any other shape or type is refused without being interpreted.
    expected = json.loads(json.dumps(header(key, tokens, position, state)))
    if found != expected:
        return None
    return CachedState(state, len(tokens), position)


def may_read(info: os.stat_result, largest: int) -> bool:
    """Whether a state file may be read: a regular file of at most ``largest`` bytes that no one but this
    user (or root) could have written."""
    return (stat.S_ISREG(info.st_mode) and info.st_uid in (os.geteuid(), 0)
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and info.st_size <= largest)


def read_state_file(file: Path, largest: int) -> tuple[bytes | None, tuple[int, int] | None]:
    """The bytes of ``file`` and its (device, inode); None for the bytes when it is refused (see may_read).

    Opened without following a symlink, and without blocking (a FIFO would wait for a writer forever),
    checked on the opened descriptor (so it cannot be swapped after the check), read to its size.

    Raises:
        FileNotFoundError: no such file (a plain miss).
        OSError: it cannot be opened as a plain file (a symlink, say) or read.
    """
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        identity = (info.st_dev, info.st_ino)
        if not may_read(info, largest):
            return None, identity
        chunks, left = [], info.st_size + 1  # one byte more: a file that grew since fstat is refused
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 24))):
            chunks.append(chunk)
            left -= len(chunk)
        return (b"".join(chunks) if left == 1 else None), identity
    finally:
        os.close(fd)


def remove_refused(file: Path, identity: tuple[int, int] | None) -> None:
    """Delete a refused entry, unless a writer has put a new file there since it was read (a file that is
    not the one refused, when the refused one was opened). An empty folder goes too; a full one stays (its
    state is then never written, each attempt counted)."""
    try:
        info = file.lstat()
    except OSError:
        return
    if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) != identity:
        return
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(info.st_mode):
            file.rmdir()
        else:
            file.unlink()


def write_state_file(file: Path, data: bytes) -> None:
    """Atomically create or replace ``file`` with ``data``, through a temporary file of this writer's own
    (concurrent writers of one state each publish a whole file; the last one wins).

    Raises:
        OSError: the folder is not writable, the disk is full, or a folder is in the file's place.
    """
    handle, temp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o644)  # as a plain write would make it: another user of a shared KB may read it
        with os.fdopen(handle, "wb") as out:
            out.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    move_into_place(temp, file)


def largest_file(largest_state: int) -> int:
    """Bytes of the largest file that can hold a state of ``largest_state`` bytes."""
    return _PREFIX.size + HEADER_MAX + largest_state
