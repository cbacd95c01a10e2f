"""engine.models.gguf_check: each structural fault of a GGUF header, and each value llama.cpp aborts on,
is refused with what is wrong; and a seeded, time-bounded fuzz of the real model and a LoRA
adapter (truncations, and single-byte changes of their header fields, tensor infos and
hyperparameters), each loaded and run for two tokens in a child process limited to 4 GiB of
address space, ends in a typed error or a successful load: never a signal, a hang or an
allocation without bound.

The fuzz runs ``$BAKEOFF_FUZZ_SECONDS`` (default 30) from seed ``$BAKEOFF_FUZZ_SEED`` (default 0)
on two lanes; ``pytest -s`` shows the counts of outcomes.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from lora_files import write_lora

from engine.errors import AdapterError, ModelError
from engine.models import gguf_check
from engine.robustness.gguf_fuzz import fuzz_gguf

FUZZ_SECONDS = float(os.environ.get("BAKEOFF_FUZZ_SECONDS", "30"))
FUZZ_SEED = int(os.environ.get("BAKEOFF_FUZZ_SEED", "0"))
ADDRESS_SPACE = 4 << 30  # RLIMIT_AS of each child: a damaged count cannot make it allocate more
CASE_TIMEOUT_S = 60
LANES = 2


# Structural faults, one at a time ------------------------------------------------

def write_small(path: Path, *, alignment: int | None = None) -> Path:
    """A small valid GGUF: a few keys of every kind and two F32 tensors."""
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_uint32("test.count", 7)
    writer.add_uint32("test.key_a", 1)
    writer.add_uint32("test.key_b", 2)
    writer.add_bool("test.flag", True)
    writer.add_string("test.name", "small")
    writer.add_array("test.words", ["a", "bc", "def"])
    writer.add_array("test.flags", [True, False])
    writer.add_tensor("tensor_a", np.arange(64, dtype=np.float32))
    writer.add_tensor("tensor_b", np.ones((2, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def fields(path: Path) -> dict[str, gguf.ReaderField]:
    return gguf.GGUFReader(str(path)).fields


def poke(path: Path, offset: int, fmt: str, value) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(struct.pack(fmt, value))


def part_offset(path: Path, key: str, part: int) -> int:
    """Byte offset of one part of a metadata field (parts: key length, key, type, value...)."""
    field = fields(path)[key]
    return field.offset + sum(p.nbytes for p in field.parts[:part])


def tensor_info_offset(path: Path, index: int, part: int) -> int:
    """Byte offset of one part of a tensor info (name length, name, n_dims, dims, type, offset)."""
    field = gguf.GGUFReader(str(path)).tensors[index].field
    return field.offset + sum(p.nbytes for p in field.parts[:part])


def test_a_valid_file_passes_and_its_layout_is_reported(tmp_path):
    path = write_small(tmp_path / "ok.gguf")
    layout = gguf_check.check_gguf(path)
    reader = gguf.GGUFReader(str(path))
    assert (layout.version, layout.n_tensors, layout.alignment) == (3, 2, 32)
    assert layout.n_kv == int(reader.fields["GGUF.kv_count"].parts[0][0])
    assert layout.data_offset == reader.data_offset
    assert layout.data_bytes == 64 * 4 + 64 * 4  # two tensors of 256 bytes, back to back
    assert gguf_check.check_gguf(write_small(tmp_path / "a64.gguf", alignment=64)).alignment == 64


def test_the_type_table_agrees_with_the_linked_ggml():
    """Block sizes as the ggml that llama.cpp links computes them (gguf-py's table differs for Q8_1)."""
    lib_dir = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
    ggml = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.so*"))))
    ggml.ggml_type_size.restype, ggml.ggml_type_size.argtypes = ctypes.c_size_t, [ctypes.c_int]
    ggml.ggml_blck_size.restype, ggml.ggml_blck_size.argtypes = ctypes.c_int64, [ctypes.c_int]
    ggml.ggml_type_name.restype, ggml.ggml_type_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    for kind in range(max(gguf_check.GGML_TYPES) + 1):
        found = (ggml.ggml_type_name(kind).decode().upper(), ggml.ggml_blck_size(kind), ggml.ggml_type_size(kind))
        if kind in gguf_check.GGML_TYPES:
            assert gguf_check.GGML_TYPES[kind] == found
        else:
            assert found[1:] == (0, 0), f"ggml type {kind} ({found[0]}) is missing from the table"


def _damage(tmp_path: Path, fault: str) -> Path:
    path = write_small(tmp_path / f"{fault}.gguf")
    size = path.stat().st_size
    if fault == "magic":
        poke(path, 0, "4s", b"GGML")
    elif fault == "version-1":
        poke(path, 4, "<I", 1)
    elif fault == "big-endian":
        poke(path, 4, ">I", 3)
    elif fault == "tensor-count":
        poke(path, 8, "<Q", 1 << 40)
    elif fault == "kv-count":
        poke(path, 16, "<Q", 1 << 40)
    elif fault == "kv-count-for-the-size":
        poke(path, 16, "<Q", size)
    elif fault == "key-length":
        poke(path, part_offset(path, "test.count", 0), "<Q", 1 << 62)
    elif fault == "value-type":
        poke(path, part_offset(path, "test.count", 2), "<I", 13)
    elif fault == "bool":
        poke(path, part_offset(path, "test.flag", 3), "<B", 2)
    elif fault == "bool-array":
        poke(path, part_offset(path, "test.flags", 5), "<B", 7)
    elif fault == "string-length":
        poke(path, part_offset(path, "test.name", 3), "<Q", size)
    elif fault == "array-length":
        poke(path, part_offset(path, "test.words", 4), "<Q", 1 << 60)
    elif fault == "array-string":
        poke(path, part_offset(path, "test.words", 5), "<Q", 1 << 40)
    elif fault == "array-of-arrays":
        poke(path, part_offset(path, "test.words", 3), "<I", 9)
    elif fault == "duplicate-key":
        poke(path, part_offset(path, "test.key_b", 1) + len("test.key_"), "1s", b"a")
    elif fault == "n-dims":
        poke(path, tensor_info_offset(path, 0, 2), "<I", 5)
    elif fault == "dim-zero":
        poke(path, tensor_info_offset(path, 0, 3), "<Q", 0)
    elif fault == "tensor-type":
        poke(path, tensor_info_offset(path, 0, 4), "<I", 4)  # Q4_2, removed
    elif fault == "block":
        poke(path, tensor_info_offset(path, 1, 4), "<I", 2)  # Q4_0, blocks of 32, along a first dimension of 16
        poke(path, tensor_info_offset(path, 1, 3), "<Q", 16)
    elif fault == "misaligned":
        poke(path, tensor_info_offset(path, 1, 5), "<Q", 260)
    elif fault == "past-the-end":
        poke(path, tensor_info_offset(path, 1, 5), "<Q", 1 << 20)
    elif fault == "overlap":
        poke(path, tensor_info_offset(path, 1, 5), "<Q", 0)
    elif fault == "duplicate-tensor":
        poke(path, tensor_info_offset(path, 1, 1) + len("tensor_"), "1s", b"a")
    elif fault == "truncated":
        os.truncate(path, size - 1)
    elif fault == "alignment":
        path = write_small(tmp_path / f"{fault}.gguf", alignment=64)
        poke(path, part_offset(path, "general.alignment", 3), "<I", 24)
    return path


FAULTS = {
    "magic": r"is not a GGUF file \(no GGUF magic: it starts with b'GGML'\)",
    "version-1": "version 1", "big-endian": "big-endian",
    "tensor-count": "tensors, more than the limit", "kv-count": "metadata keys, more than the limit",
    "kv-count-for-the-size": "more than a .*-byte file can hold", "key-length": "more than the limit of 65535",
    "value-type": "unknown value type 13", "bool": "not 0 or 1", "bool-array": "other than 0 and 1",
    "string-length": "'test.name'.*runs past the end", "array-length": "'test.words' claims .* elements",
    "array-string": "'test.words' of 3 strings runs past the end", "array-of-arrays": "array of arrays",
    "duplicate-key": "'test.key_a' appears twice", "n-dims": "5 dimensions", "dim-zero": "must be >= 1",
    "tensor-type": "unknown ggml type 4", "block": "not a multiple of its block of 32",
    "misaligned": "not a multiple of the alignment", "past-the-end": "'tensor_b'.*runs past the end",
    "overlap": "overlap", "duplicate-tensor": "'tensor_a' appears twice", "truncated": "truncated",
    "alignment": "24, not a power of two",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_structural_fault_is_named(tmp_path, fault):
    path = _damage(tmp_path, fault)
    with pytest.raises(ModelError, match=FAULTS[fault]):
        gguf_check.check_gguf(path)
    with pytest.raises(AdapterError, match=FAULTS[fault]):
        gguf_check.check_gguf(path, adapter=True)


def write_hparams(path: Path, **values) -> Path:
    """A small llama GGUF with the given hyperparameters (keys of gguf.GGUFWriter's add_* methods)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, value in values.items():
        getattr(writer, f"add_{name}")(value)
    writer.add_tensor("tensor_a", np.arange(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("values, message", [
    ({"block_count": 0}, "block_count is 0: llama.cpp takes 1 to 512"),
    ({"block_count": 513}, "block_count is 513"),
    ({"head_count": 4, "head_count_kv": 2**31 + 3}, "head_count_kv is 2147483651, more than the 4"),
    ({"layer_norm_rms_eps": -1e-5}, "layer_norm_rms_epsilon is -1e-05"),
    ({"layer_norm_eps": float("nan")}, "layer_norm_epsilon is nan"),
    ({"token_list": ["a", "b", "a"]}, "holds the token b'a' twice"),
], ids=["no-layers", "too-many-layers", "kv-heads", "rms-eps", "eps-nan", "duplicate-token"])
def test_values_llama_cpp_would_abort_on_are_refused(tmp_path, values, message):
    path = write_hparams(tmp_path / "hparams.gguf", **values)
    with pytest.raises(ModelError, match=message):
        gguf_check.check_gguf(path)


def test_sound_values_pass(tmp_path):
    path = write_hparams(tmp_path / "hparams.gguf", block_count=30, head_count=9, head_count_kv=3,
                         layer_norm_rms_eps=1e-5, token_list=["a", "b", "c"])
    assert gguf_check.check_gguf(path).n_tensors == 1


def test_a_file_too_short_or_unreadable(tmp_path):
    (tmp_path / "short.gguf").write_bytes(b"GGUF\x03\x00")
    with pytest.raises(ModelError, match="shorter than a GGUF header"):
        gguf_check.check_gguf(tmp_path / "short.gguf")
    with pytest.raises(ModelError, match="cannot read"):
        gguf_check.check_gguf(tmp_path / "missing.gguf")


def test_the_real_model_and_adapter_pass(generator_model_path, tmp_path):
    layout = gguf_check.check_gguf(generator_model_path)
    assert layout.n_tensors == len(gguf.GGUFReader(str(generator_model_path)).tensors)
    assert layout.data_offset + layout.data_bytes <= layout.file_bytes
    gguf_check.check_gguf(write_lora(tmp_path / "lora.gguf"), adapter=True)


# Fuzz ------------------------------------------------------------------------------

def test_damaged_headers_load_or_fail_typed_in_a_child(generator_model_path, tmp_path):
    """Seeded, time-bounded header fuzz (engine.robustness.gguf_fuzz): a typed error or a load, never a
    signal, a hang or a truncated file that loads."""
    files = {"model": generator_model_path, "adapter": write_lora(tmp_path / "lora.gguf")}
    report = fuzz_gguf(files, tmp_path, seconds=FUZZ_SECONDS, seed=FUZZ_SEED, lanes=LANES)
    print(f"gguf fuzz: {report}")
    assert not report.failures, "\n".join(str(f) for f in report.failures[:20])
    assert report.cases >= 2 * LANES, report
