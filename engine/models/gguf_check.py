"""Checks of a GGUF file's structure, made before llama.cpp parses it.

llama.cpp reads the counts, lengths and offsets of a GGUF header as the file states
them. A file from elsewhere (a user's model, a LoRA adapter) may be truncated or
damaged, so :func:`check_gguf` first walks its header as the GGUF specification
(ggml ``docs/gguf.md``) lays it out, and refuses with what is wrong, and where, a
file whose header is inconsistent with itself or with its size:

* magic ``GGUF`` and version 2 or 3 (little-endian);
* tensor and key/value counts within hard caps and within what the file could hold;
* every string and array length within the file and within hard caps; keys UTF-8,
  unique and at most 65535 bytes; value types known; booleans 0 or 1;
  ``general.alignment`` a uint32 power of two, a multiple of 8;
* every tensor: a unique name of at most 64 bytes, 1 to 4 dimensions, each >= 1, a
  known ggml type whose block divides the first dimension, an offset that is a
  multiple of the alignment, data inside the file and not overlapping another's.

Whether the metadata makes sense for an architecture is llama.cpp's to judge, and it
says so with an error of its own, except for a few values that make the llama.cpp we
link abort the process (a failed ``GGML_ASSERT``) instead; those are refused here
(:data:`ABORTING_VALUES`, found by fuzzing single-byte changes of a real model):

* ``{arch}.block_count`` outside 1..512 (llama.cpp's most layers);
* ``{arch}.attention.head_count_kv`` above ``{arch}.attention.head_count``;
* a negative or not finite ``{arch}.attention.layer_norm[_rms]_epsilon``;
* the same string twice in ``tokenizer.ggml.tokens``.

Only the header is read (memory-mapped), never the tensor data. For SmolLM2-135M
(98 MB; 49,152 tokens and 48,900 merges to step over) that is about 10 ms of CPU,
plus about 10 ms for the set that finds a duplicate token; a LoRA adapter's header,
well under 1 ms. Models of the model cache are not checked here: their sha256 is
(``engine.models.registry.verify_file``).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import AdapterError, ModelError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
# Hard caps, far above real models (hundreds to a few thousand tensors, tens of keys,
# vocabularies of up to a few hundred thousand strings) and low enough that a damaged
# count cannot make a reader allocate without bound.
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_ARRAY_LEN = 1 << 24
MAX_STRING_BYTES = 1 << 24
MAX_KEY_BYTES = (1 << 16) - 1  # the specification's limit
MAX_TENSOR_NAME_BYTES = 64  # the specification's limit
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS
_ALIGNMENT_KEY = "general.alignment"
_ARCH_KEY = "general.architecture"
_TOKENS_KEY = "tokenizer.ggml.tokens"
#: Metadata whose bad values make llama.cpp abort instead of failing the load ({arch} is the architecture).
ABORTING_VALUES = ("{arch}.block_count", "{arch}.attention.head_count_kv", "{arch}.attention.layer_norm_epsilon",
                   "{arch}.attention.layer_norm_rms_epsilon", _TOKENS_KEY)

# GGUF metadata value types (the specification's gguf_metadata_value_type).
_UINT32, _BOOL, _STRING, _ARRAY = 4, 7, 8, 9
_FIXED_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # type -> bytes
_SCALAR = {kind: struct.Struct(f"<{code}") for kind, code in
           {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}.items()}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "bool",
               8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}

#: ggml tensor types a GGUF may hold: id -> (name, elements per block, bytes per block).
#: Ids 4, 5 and 31-33, 36-38 were removed from GGUF files (see the specification).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")


@dataclass(frozen=True)
class GGUFLayout:
    """What :func:`check_gguf` found: the header's counts and where the tensor data starts."""

    version: int
    n_tensors: int
    n_kv: int
    alignment: int
    data_offset: int  # bytes from the start of the file to the tensor data
    data_bytes: int  # bytes the tensors' data spans (their ends, not counting padding after the last)
    file_bytes: int


class _Invalid(Exception):
    """One structural fault, with the byte offset where it was found."""

    def __init__(self, what: str, at: int) -> None:
        super().__init__(what)
        self.what, self.at = what, at


def check_gguf(path: str | os.PathLike[str], *, adapter: bool = False) -> GGUFLayout:
    """Check that ``path`` is a structurally sound GGUF file, reading only its header.

    Args:
        path: the file.
        adapter: the file is a LoRA adapter (changes the error type and the advice).

    Returns:
        The layout found.

    Raises:
        ModelError (AdapterError when ``adapter``): the file cannot be opened, is not
            GGUF, or its header is damaged; the message says what is wrong and at
            which byte.
    """
    path = Path(path)
    error = AdapterError if adapter else ModelError
    advice = ("re-export the adapter (`bakeoff finetune`, or llama.cpp's convert_lora_to_gguf.py)" if adapter else
              "download the model again, or convert it again with llama.cpp's convert_hf_to_gguf.py")
    size = 0
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(len(MAGIC))
            if head != MAGIC:
                raise error(f"'{path}' is not a GGUF file (no GGUF magic: it starts with {head!r}): convert it "
                            "with llama.cpp's convert_hf_to_gguf.py (convert_lora_to_gguf.py for an adapter)")
            if size < _HEADER.size:
                raise _Invalid(f"the file is {size} bytes, shorter than a GGUF header ({_HEADER.size} bytes)", 0)
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                walk = _Walk(view, size)
                layout = walk.layout()
                if adapter:  # small: every float is read (a model's gigabytes are not)
                    walk.check_finite(layout.data_offset)
                return layout
    except OSError as exc:
        raise error(f"cannot read '{path}' ({exc.strerror or exc}): check the path exists and is readable") from None
    except _Invalid as fault:
        raise error(f"'{path}' is not a valid GGUF file: {fault.what} (at byte {fault.at} of {size}) — {advice}"
                    ) from None


class _Walk:
    """One pass over a GGUF header held in ``buf`` (``size`` bytes)."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0
        self.kinds: dict[str, int] = {}  # tensor name -> ggml type
        self.tensors: list[tuple[str, int, int, int]] = []
        self.scalars: dict[str, tuple[int | float, int]] = {}  # numeric values: (value, offset)
        self.architecture = ""

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise _Invalid(f"{what} runs past the end of the file (needs {n} bytes, {self.size - self.pos} left): "
                           "the file is truncated or its header is damaged", self.pos)

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return value

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return value

    def string(self, what: str, cap: int) -> bytes:
        start = self.pos
        n = self.u64(f"the length of {what}")
        if n > cap:
            raise _Invalid(f"{what} claims {n} bytes, more than the limit of {cap}", start)
        self.need(n, what)
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def layout(self) -> GGUFLayout:
        _magic, version, n_tensors, n_kv = _HEADER.unpack_from(self.buf, 0)  # the magic was checked on opening
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            hint = (" — it looks big-endian, which this build does not read" if swapped in VERSIONS else
                    ", a GGUF version llama.cpp no longer reads" if version == 1 else "")
            raise _Invalid(f"GGUF version {version} (this reader takes {', '.join(map(str, VERSIONS))}){hint}", 4)
        if n_tensors > MAX_TENSORS:
            raise _Invalid(f"the header claims {n_tensors} tensors, more than the limit of {MAX_TENSORS}", 8)
        if n_kv > MAX_KV:
            raise _Invalid(f"the header claims {n_kv} metadata keys, more than the limit of {MAX_KV}", 16)
        # Each key/value takes at least 13 bytes and each tensor info at least 32: a count the
        # file cannot hold is refused before anything is walked.
        if n_kv * 13 + n_tensors * 32 > self.size - _HEADER.size:
            raise _Invalid(f"the header claims {n_kv} metadata keys and {n_tensors} tensors, more than "
                           f"a {self.size}-byte file can hold: the file is truncated or its header is damaged", 8)
        self.pos = _HEADER.size
        alignment = self.metadata(n_kv)
        self.check_hyperparameters()
        tensors = [self.tensor_info(i) for i in range(n_tensors)]
        data_offset = -(-self.pos // alignment) * alignment
        if data_offset > self.size:
            raise _Invalid("the tensor data would start past the end of the file: the file is truncated", self.pos)
        return GGUFLayout(version, n_tensors, n_kv, alignment, data_offset,
                          self.check_data(tensors, data_offset, alignment), self.size)

    # Metadata -------------------------------------------------------------------

    def metadata(self, n_kv: int) -> int:
        """Walk the key/value pairs; returns the alignment they set (32 when they do not)."""
        seen: set[bytes] = set()
        alignment = DEFAULT_ALIGNMENT
        for index in range(n_kv):
            start = self.pos
            raw = self.string(f"the key of metadata entry {index}", MAX_KEY_BYTES)
            try:
                key = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _Invalid(f"the key of metadata entry {index} is not UTF-8 ({raw[:40]!r})", start) from None
            if not key:
                raise _Invalid(f"metadata entry {index} has an empty key", start)
            if raw in seen:
                raise _Invalid(f"metadata key {key!r} appears twice", start)
            seen.add(raw)
            type_at = self.pos
            kind = self.u32(f"the type of metadata key {key!r}")
            if key == _ALIGNMENT_KEY:
                if kind != _UINT32:
                    raise _Invalid(f"{key} is a {_TYPE_NAMES.get(kind, kind)}, not a uint32", type_at)
                value_at = self.pos
                alignment = self.u32(key)
                if alignment < 8 or alignment & (alignment - 1) or alignment % 8:
                    raise _Invalid(f"{key} is {alignment}, not a power of two and a multiple of 8", value_at)
            else:
                self.value(kind, key, type_at)
        return alignment

    def value(self, kind: int, key: str, type_at: int) -> None:
        size = _FIXED_SIZE.get(kind)
        if size is not None:
            self.need(size, f"the value of {key!r}")
            if kind == _BOOL and self.buf[self.pos] > 1:
                raise _Invalid(f"the bool {key!r} holds {self.buf[self.pos]}, not 0 or 1", self.pos)
            self.scalars[key] = (_SCALAR[kind].unpack_from(self.buf, self.pos)[0], self.pos)
            self.pos += size
        elif kind == _STRING:
            text = self.string(f"the string {key!r}", MAX_STRING_BYTES)
            if key == _ARCH_KEY:
                self.architecture = text.decode("utf-8", "replace")
        elif kind == _ARRAY:
            self.array(key)
        else:
            raise _Invalid(f"metadata key {key!r} has unknown value type {kind} (known: 0-12)", type_at)

    def array(self, key: str) -> None:
        type_at = self.pos
        kind = self.u32(f"the element type of {key!r}")
        count_at = self.pos
        count = self.u64(f"the length of the array {key!r}")
        if count > MAX_ARRAY_LEN:
            raise _Invalid(f"the array {key!r} claims {count} elements, more than the limit of {MAX_ARRAY_LEN}",
                           count_at)
        size = _FIXED_SIZE.get(kind)
        if size is not None:
            self.need(count * size, f"the array {key!r} of {count} {_TYPE_NAMES[kind]}")
            if kind == _BOOL and self.buf[self.pos:self.pos + count].translate(None, b"\x00\x01"):
                raise _Invalid(f"the bool array {key!r} holds values other than 0 and 1", self.pos)
            self.pos += count * size
        elif kind == _STRING:
            self.need(count * 8, f"the array {key!r} of {count} strings")
            self.strings(key, count)
        elif kind == _ARRAY:
            raise _Invalid(f"{key!r} is an array of arrays, which llama.cpp does not read", type_at)
        else:
            raise _Invalid(f"the array {key!r} has unknown element type {kind} (known: 0-12)", type_at)

    def strings(self, key: str, count: int) -> None:
        """Step over ``count`` strings: the one loop that meets every token of a vocabulary, kept bare."""
        buf, start, unpack = self.buf, self.pos, _U64.unpack_from
        pos = start
        tokens: set[bytes] = set()
        try:
            if key == _TOKENS_KEY:  # also collected, to find a token that appears twice
                add, cap = tokens.add, MAX_STRING_BYTES
                for _ in range(count):
                    n = unpack(buf, pos)[0]
                    if n > cap:  # checked before the slice: a damaged length must not copy the file
                        raise _Invalid(f"a string of the array {key!r} claims {n} bytes, more than the limit of "
                                       f"{cap}", pos)
                    pos += 8
                    add(buf[pos:pos + n])
                    pos += n
            else:
                for _ in range(count):
                    pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError):  # a length that jumped past the end of the file
            pos = self.size + 1
        if pos > self.size:
            raise _Invalid(f"the array {key!r} of {count} strings runs past the end of the file: the file is "
                           "truncated or its header is damaged", start)
        if pos - start - 8 * count > MAX_STRING_BYTES:  # only then can one of them exceed the cap
            self.each_string(key, start, count, lambda n, text, at: (
                f"a string of the array {key!r} claims {n} bytes, more than the limit of {MAX_STRING_BYTES}"
                if n > MAX_STRING_BYTES else ""))
        if key == _TOKENS_KEY and len(tokens) != count:
            seen: set[bytes] = set()

            def twice(n: int, text: bytes, at: int) -> str:
                if text in seen:
                    return f"the vocabulary ({key}) holds the token {text[:40]!r} twice, which llama.cpp aborts on"
                seen.add(text)
                return ""

            self.each_string(key, start, count, twice)
        self.pos = pos

    def each_string(self, key: str, start: int, count: int, fault: Callable[[int, bytes, int], str]) -> None:
        """The slow path: call ``fault(length, text, offset)`` on each string; raise the first fault it names."""
        at = start
        for _ in range(count):
            n = _U64.unpack_from(self.buf, at)[0]
            what = fault(n, self.buf[at + 8:at + 8 + min(n, MAX_STRING_BYTES)], at)
            if what:
                raise _Invalid(what, at)
            at += 8 + n

    def check_hyperparameters(self) -> None:
        """Refuse the values of :data:`ABORTING_VALUES` that make llama.cpp abort."""
        arch = self.architecture

        def number(name: str) -> tuple[int | float, int] | None:
            return self.scalars.get(name.format(arch=arch))

        if (layers := number("{arch}.block_count")) and not 1 <= layers[0] <= MAX_LAYERS:
            raise _Invalid(f"{arch}.block_count is {layers[0]}: llama.cpp takes 1 to {MAX_LAYERS} layers", layers[1])
        heads, kv_heads = number("{arch}.attention.head_count"), number("{arch}.attention.head_count_kv")
        if heads and kv_heads and heads[0] > 0 and kv_heads[0] > heads[0]:
            raise _Invalid(f"{arch}.attention.head_count_kv is {kv_heads[0]}, more than the {heads[0]} attention "
                           "heads", kv_heads[1])
        for name in ("{arch}.attention.layer_norm_epsilon", "{arch}.attention.layer_norm_rms_epsilon"):
            eps = number(name)
            if eps and not (math.isfinite(eps[0]) and eps[0] >= 0):
                raise _Invalid(f"{name.format(arch=arch)} is {eps[0]:g}, not a finite number >= 0", eps[1])

    # Tensors --------------------------------------------------------------------

    def tensor_info(self, index: int) -> tuple[str, int, int, int]:
        """One tensor info; returns (name, start of the info, offset, bytes of data)."""
        start = self.pos
        name = self.string(f"the name of tensor {index}", MAX_TENSOR_NAME_BYTES).decode("utf-8", "replace")
        dims_at = self.pos
        n_dims = self.u32(f"the dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Invalid(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} are valid)", dims_at)
        dims = [self.u64(f"the dimensions of tensor {name!r}") for _ in range(n_dims)]
        if min(dims) < 1:
            raise _Invalid(f"tensor {name!r} has shape {dims}: every dimension must be >= 1", dims_at)
        type_at = self.pos
        kind = self.u32(f"the type of tensor {name!r}")
        if kind not in GGML_TYPES:
            raise _Invalid(f"tensor {name!r} has unknown ggml type {kind}", type_at)
        type_name, block, block_bytes = GGML_TYPES[kind]
        if dims[0] % block:
            raise _Invalid(f"tensor {name!r} of type {type_name} has a first dimension of {dims[0]}, not a "
                           f"multiple of its block of {block}", dims_at)
        elements = 1
        for dim in dims:
            elements *= dim
        offset = self.u64(f"the data offset of tensor {name!r}")
        self.kinds[name] = kind
        self.tensors.append((name, start, offset, elements // block * block_bytes))
        return name, start, offset, elements // block * block_bytes

    def check_data(self, tensors: list[tuple[str, int, int, int]], data_offset: int, alignment: int) -> int:
        """Every tensor's data aligned, inside the file and apart from the others; returns the bytes they span."""
        room = self.size - data_offset
        seen: set[str] = set()
        for name, start, offset, nbytes in tensors:
            if name in seen:
                raise _Invalid(f"tensor name {name!r} appears twice", start)
            seen.add(name)
            if offset % alignment:
                raise _Invalid(f"tensor {name!r} has data offset {offset}, not a multiple of the alignment "
                               f"{alignment}", start)
            if offset + nbytes > room:
                raise _Invalid(f"the data of tensor {name!r} ({nbytes} bytes at offset {offset}) runs past the end "
                               f"of the file ({room} bytes of tensor data): the file is truncated", start)
        end = 0
        previous = ""
        for offset, nbytes, name in sorted((t[2], t[3], t[0]) for t in tensors):
            if offset < end:
                raise _Invalid(f"the data of tensors {previous!r} and {name!r} overlap", data_offset + offset)
            end, previous = offset + nbytes, name
        return end

    def check_finite(self, data_offset: int) -> None:
        """Every F32, F16 and BF16 value is finite: an adapter holding NaN or inf makes every
        answer empty or garbage, so it is refused at load."""
        for name, _start, offset, nbytes in self.tensors:
            kind = self.kinds[name]
            if kind in (0, 1, 30) and (bad := _non_finite(self.buf, kind, data_offset + offset, nbytes)):
                raise _Invalid(f"tensor {name!r} holds {bad} NaN or infinite values (did training diverge?)",
                               data_offset + offset)


def _non_finite(buf: mmap.mmap, kind: int, offset: int, nbytes: int) -> int:
    """How many of the F32 (0), F16 (1) or BF16 (30) values at ``offset`` are NaN or infinite.

    The arrays over ``buf`` are gone when this returns, so the map can be closed.
    """
    import numpy as np

    dtype = {0: np.float32, 1: np.float16, 30: np.uint16}[kind]
    values = np.frombuffer(buf, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset)
    if kind == 30:  # bfloat16: all exponent bits set
        return int(np.count_nonzero((values & 0x7F80) == 0x7F80))
    return int(values.size - np.count_nonzero(np.isfinite(values)))
