"""engine.generation.kv_cache: chunk states kept in RAM and on disk, within budgets, and never used when damaged
or made for anything else than what is asked (another model, adapter, KV setting, build, prefix, tokens)."""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest

from engine.errors import InputError
from engine.generation.kv_cache import ChunkKvCache, StateKey

KEY = StateKey("m" * 64, (), "f16", "auto", "build-1", "p" * 64)
TOKENS = (11, 12, 13)
STATE = bytes(range(256)) * 40  # 10 KB, like a small state


def _files(cache: ChunkKvCache) -> list:
    assert cache.directory is not None
    return sorted(cache.directory.glob("*/*.kv"))


def test_a_state_comes_back_from_ram_and_from_disk_in_a_new_process_view(tmp_path):
    cache = ChunkKvCache(tmp_path)
    cache.put(KEY, "block text", TOKENS, 7, STATE)
    found = cache.get(KEY, "block text", TOKENS, 7)
    assert found is not None and found.state == STATE and found.n_tokens == 3 and found.position == 7
    reopened = ChunkKvCache(tmp_path)  # what a restart sees: the disk only
    again = reopened.get(KEY, "block text", TOKENS, 7)
    assert again is not None and again.state == STATE
    assert reopened.stats().disk_hits == 1 and cache.stats().ram_hits == 1
    assert reopened.get(KEY, "other text", TOKENS, 7) is None
    assert reopened.stats().misses == 1


@pytest.mark.parametrize("damage", ["truncate", "flip-state", "flip-header", "empty", "not-ours"])
def test_a_damaged_file_is_rejected_counted_and_deleted(tmp_path, damage):
    ChunkKvCache(tmp_path).put(KEY, "block", TOKENS, 7, STATE)
    [file] = _files(ChunkKvCache(tmp_path))
    data = bytearray(file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip-state":
        data[-5] ^= 0x01
    elif damage == "flip-header":
        data[20] ^= 0x20
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"GGUF" + bytes(200))
    file.write_bytes(bytes(data))
    cache = ChunkKvCache(tmp_path)
    assert cache.get(KEY, "block", TOKENS, 7) is None
    stats = cache.stats()
    assert stats.rejected == 1 and stats.disk_hits == 0
    assert not file.exists()


@pytest.mark.parametrize("change", ["model_sha256", "adapters", "kv_type", "flash_attn", "build", "prefix_sha256"])
def test_a_state_made_for_another_key_is_never_used(tmp_path, change):
    cache = ChunkKvCache(tmp_path)
    cache.put(KEY, "block", TOKENS, 7, STATE)
    value = (("a" * 64, 1.0),) if change == "adapters" else "other"
    other = dataclasses.replace(KEY, **{change: value})
    assert other.digest != KEY.digest
    assert cache.get(other, "block", TOKENS, 7) is None
    # A file copied under the other key's folder is refused by its header.
    [file] = _files(cache)
    target = tmp_path / other.digest / file.name
    target.parent.mkdir()
    target.write_bytes(file.read_bytes())
    fresh = ChunkKvCache(tmp_path)
    assert fresh.get(other, "block", TOKENS, 7) is None
    assert fresh.stats().rejected == 1


def test_other_tokens_or_position_for_the_same_text_are_refused(tmp_path):
    ChunkKvCache(tmp_path).put(KEY, "block", TOKENS, 7, STATE)
    assert ChunkKvCache(tmp_path).get(KEY, "block", (11, 12, 14), 7) is None
    ChunkKvCache(tmp_path).put(KEY, "block", TOKENS, 7, STATE)
    assert ChunkKvCache(tmp_path).get(KEY, "block", TOKENS, 8) is None


def test_budgets_evict_the_least_recently_used(tmp_path):
    size = len(STATE)
    cache = ChunkKvCache(tmp_path, ram_bytes=2 * size + 10, disk_bytes=3 * (size + 600))
    for name in ("a", "b", "c", "d"):
        cache.put(KEY, name, TOKENS, 0, STATE)
        if name == "b":
            assert cache.get(KEY, "a", TOKENS, 0) is not None  # "a" is now more recent than "b"
    stats = cache.stats()
    assert stats.ram_bytes <= cache.ram_budget and stats.disk_bytes <= cache.disk_budget
    assert stats.evictions >= 2
    assert len(_files(cache)) == 3
    names = {f.stem for f in _files(cache)}
    from engine.generation.kv_cache import text_sha256
    assert text_sha256("b") not in names  # least recently used on disk went first


def test_an_unwritable_folder_means_ram_only_with_one_warning(tmp_path):
    if os.geteuid() == 0:
        blocked = tmp_path / "a-file"
        blocked.write_text("not a folder")
        folder = blocked / "kv"  # cannot be made even by root
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = ChunkKvCache(folder)
        cache.put(KEY, "block", TOKENS, 0, STATE)
        assert cache.get(KEY, "block", TOKENS, 0) is not None
    assert len([w for w in caught if "not writable" in str(w.message)]) == 1
    assert not cache.stats().disk_enabled


def test_prune_and_clear(tmp_path):
    cache = ChunkKvCache(tmp_path)
    for name in ("kept", "gone"):
        cache.put(KEY, name, TOKENS, 0, STATE)
    assert cache.prune(KEY, ["kept"]) == 1
    assert cache.get(KEY, "gone", TOKENS, 0) is None
    assert cache.get(KEY, "kept", TOKENS, 0) is not None
    cache.clear()
    assert cache.stats().ram_bytes == 0 and not _files(cache)
    assert cache.get(KEY, "kept", TOKENS, 0) is None


@pytest.mark.parametrize("budget", [-1, 1.5, True, "1"])
def test_a_bad_budget_is_a_typed_error(tmp_path, budget):
    with pytest.raises(InputError, match="ram_bytes"):
        ChunkKvCache(tmp_path, ram_bytes=budget)
