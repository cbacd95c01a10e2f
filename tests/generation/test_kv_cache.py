"""engine.generation.kv_cache: chunk states kept in RAM and on disk, within budgets, and never used when damaged
or made for anything else than what is asked (another model, adapter, KV setting, build, prefix, tokens)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

from engine.errors import InputError
from engine.generation.kv_cache import ChunkKvCache
from engine.generation.kv_file import StateKey, text_sha256

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


# Hostile folders (issue 21) ----------------------------------------------------------

def _state_file(folder, text: str = "block", key: StateKey = KEY):
    file = folder / key.digest / f"{text_sha256(text)}.kv"
    file.parent.mkdir(parents=True, exist_ok=True)
    return file


def _get_in_a_child(folder, text: str = "block") -> dict:
    """cache.get in a child process with 1 GiB of address space and a deadline: a hang or a runaway
    allocation fails the test instead of the machine."""
    script = textwrap.dedent(f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
        from engine.generation.kv_cache import ChunkKvCache
        from engine.generation.kv_file import StateKey
        key = StateKey({KEY.model_sha256!r}, (), {KEY.kv_type!r}, {KEY.flash_attn!r}, {KEY.build!r},
                       {KEY.prefix_sha256!r})
        cache = ChunkKvCache({str(folder)!r})
        found = cache.get(key, {text!r}, {TOKENS!r}, 7)
        print(json.dumps(dict(found=found is not None, rejected=cache.stats().rejected)))
    """)
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("reading the cache folder hung")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("entry", ["fifo", "dev-zero", "sparse-20GB", "directory", "symlink-to-a-state"])
def test_an_entry_that_is_not_a_regular_file_of_plausible_size_is_a_miss_and_replaced(tmp_path, entry):
    file = _state_file(tmp_path)
    if entry == "fifo":
        os.mkfifo(file)
    elif entry == "dev-zero":
        file.symlink_to("/dev/zero")
    elif entry == "sparse-20GB":
        with open(file, "wb") as handle:
            handle.truncate(20 * 2**30)
    elif entry == "directory":
        file.mkdir()
    else:
        real = tmp_path / "elsewhere.kv"
        ChunkKvCache(tmp_path / "other").put(KEY, "block", TOKENS, 7, STATE)
        real.write_bytes(next((tmp_path / "other").glob("*/*.kv")).read_bytes())
        file.symlink_to(real)
    try:
        seen = _get_in_a_child(tmp_path)
    finally:
        if entry == "fifo":  # let a reader that is still blocked in open() go
            with contextlib.suppress(OSError):
                os.close(os.open(file, os.O_WRONLY | os.O_NONBLOCK))
    assert seen == {"found": False, "rejected": 1}
    # The caller recomputes the state: it is written anew in the bad entry's place (a regular file).
    cache = ChunkKvCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.put(KEY, "block", TOKENS, 7, STATE)
    assert file.is_file() and not file.is_symlink()
    again = ChunkKvCache(tmp_path).get(KEY, "block", TOKENS, 7)
    assert again is not None and again.state == STATE


def test_a_file_larger_than_any_state_the_cache_keeps_is_refused_before_it_is_read(tmp_path):
    cache = ChunkKvCache(tmp_path, ram_bytes=len(STATE) + 2000)
    cache.put(KEY, "block", TOKENS, 7, STATE)
    file = _state_file(tmp_path)
    with open(file, "ab") as handle:  # a real state with a tail: bigger than the budget allows
        handle.truncate(file.stat().st_size + 10 * len(STATE))
    small = ChunkKvCache(tmp_path, ram_bytes=len(STATE) + 2000)
    assert small.get(KEY, "block", TOKENS, 7) is None
    assert small.stats().rejected == 1 and not file.exists()


def test_four_threads_asking_for_the_same_states_on_an_empty_folder_write_every_one(tmp_path):
    texts = [f"chunk {i}" for i in range(6)]
    big = STATE * 20  # 200 KB: writes long enough to overlap
    for round_ in range(3):
        folder = tmp_path / f"round-{round_}"
        cache = ChunkKvCache(folder)
        start = threading.Barrier(4)
        errors = []

        def ask(cache: ChunkKvCache, start: threading.Barrier, errors: list) -> None:
            try:
                start.wait()
                for text in texts:
                    if cache.get(KEY, text, TOKENS, 0) is None:
                        cache.put(KEY, text, TOKENS, 0, big)
            except BaseException as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            threads = [threading.Thread(target=ask, args=(cache, start, errors)) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
        assert not errors and not [str(w.message) for w in caught]
        assert cache.stats().disk_enabled
        assert len(_files(cache)) == 6
        assert not list(folder.glob("*/.*"))  # no temporary file left behind
        fresh = ChunkKvCache(folder)
        assert all(fresh.get(KEY, text, TOKENS, 0) is not None for text in texts)
        assert fresh.stats().disk_hits == 6


@pytest.mark.parametrize("wait", [True, False], ids=["written-at-once", "written-behind"])
def test_a_failed_write_costs_that_state_only(tmp_path, wait):
    blocked = _state_file(tmp_path, "b")
    blocked.mkdir()
    (blocked / "inside").write_text("a directory that cannot be replaced by a file")
    cache = ChunkKvCache(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for text in ("a", "b", "c", "b", "d"):
            cache.put(KEY, text, TOKENS, 0, STATE, wait=wait)
        cache.flush()
    assert len(caught) <= 1  # said once, not per state
    stats = cache.stats()
    assert stats.disk_enabled and stats.failed_writes == 2
    assert {f.stem for f in _files(cache) if f.is_file()} == {text_sha256(t) for t in "acd"}
    found = cache.get(KEY, "b", TOKENS, 0)  # served from RAM
    assert found is not None and found.state == STATE
    fresh = ChunkKvCache(tmp_path)  # a new process: recomputes "b", reads the others from disk
    assert fresh.get(KEY, "b", TOKENS, 0) is None
    assert all(fresh.get(KEY, t, TOKENS, 0) is not None for t in "acd")


def _header(file) -> tuple[dict, bytes]:
    data = file.read_bytes()
    _, _, length = struct.unpack_from("<4sII", data)
    return json.loads(data[12:12 + length]), data[12 + length:]


def _rewrite(file, header: dict | bytes, state: bytes, version: int | None = None) -> None:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    if version is None:
        version = struct.unpack_from("<4sII", file.read_bytes())[1]
    file.write_bytes(struct.pack("<4sII", b"BKKV", version, len(encoded)) + encoded + state)


@pytest.mark.parametrize("forgery", ["adapters-not-pairs", "adapters-not-a-list", "header-a-list", "deep-nesting",
                                     "not-utf8", "huge-header-length"])
def test_a_malformed_header_is_rejected_and_deleted_never_raised(tmp_path, forgery):
    ChunkKvCache(tmp_path).put(KEY, "block", TOKENS, 7, STATE)
    file = _state_file(tmp_path)
    header, state = _header(file)
    if forgery == "adapters-not-pairs":
        _rewrite(file, dict(header, adapters=[1, 2]), state)
    elif forgery == "adapters-not-a-list":
        _rewrite(file, dict(header, adapters=7), state)
    elif forgery == "header-a-list":
        _rewrite(file, b"[1, 2, 3]", state)
    elif forgery == "deep-nesting":
        _rewrite(file, b"[" * 100_000 + b"]" * 100_000, state)
    elif forgery == "not-utf8":
        _rewrite(file, b"\xff\xfe{}", state)
    else:
        data = bytearray(file.read_bytes())
        data[8:12] = struct.pack("<I", 2**32 - 1)
        file.write_bytes(bytes(data))
    cache = ChunkKvCache(tmp_path)
    assert cache.get(KEY, "block", TOKENS, 7) is None
    assert cache.stats().rejected == 1 and not file.exists()


def test_the_header_names_the_whole_key_and_an_old_format_is_replaced(tmp_path):
    ChunkKvCache(tmp_path).put(KEY, "block", TOKENS, 7, STATE)
    file = _state_file(tmp_path)
    header, state = _header(file)
    assert header["key_digest"] == KEY.full_digest and header["position"] == 7 and header["n_tokens"] == 3
    # The same file with the format version before the key digest: a miss, deleted, then written anew.
    old = {k: v for k, v in header.items() if k != "key_digest"}
    _rewrite(file, old, state, version=1)
    cache = ChunkKvCache(tmp_path)
    assert cache.get(KEY, "block", TOKENS, 7) is None and not file.exists()
    cache.put(KEY, "block", TOKENS, 7, STATE)
    assert ChunkKvCache(tmp_path).get(KEY, "block", TOKENS, 7) is not None


def test_a_header_claiming_the_key_with_another_keys_digest_is_refused(tmp_path):
    """A file whose fields were edited to the folder's key, but whose digest still names the key it was made for."""
    adapter_key = dataclasses.replace(KEY, adapters=(("a" * 64, 1.0),))
    ChunkKvCache(tmp_path).put(adapter_key, "block", TOKENS, 7, STATE)
    made = _state_file(tmp_path, key=adapter_key)
    header, state = _header(made)
    placed = _state_file(tmp_path, key=KEY)
    placed.write_bytes(made.read_bytes())
    _rewrite(placed, dict(header, adapters=[]), state)
    cache = ChunkKvCache(tmp_path)
    assert cache.get(KEY, "block", TOKENS, 7) is None and cache.stats().rejected == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file owned by another user needs root")
@pytest.mark.parametrize("planted", ["another-owner", "writable-by-others"])
def test_a_file_another_user_could_have_written_is_refused(tmp_path, planted):
    """Another local user who can write the folder cannot make a file that is ours: theirs is refused."""
    ChunkKvCache(tmp_path).put(KEY, "block", TOKENS, 7, STATE)
    file = _state_file(tmp_path)
    if planted == "another-owner":
        os.chown(file, 12345, 12345)
    else:
        file.chmod(0o666)
    cache = ChunkKvCache(tmp_path)
    assert cache.get(KEY, "block", TOKENS, 7) is None and cache.stats().rejected == 1
    cache.put(KEY, "block", TOKENS, 7, STATE)
    assert file.stat().st_uid == os.geteuid() and not file.stat().st_mode & 0o022



# A state's rotation by a wrong offset is caught where it is spliced:
# tests/generation/test_splice.py::test_bad_splices_are_typed_errors_and_leave_the_generator_usable (a state
# named at position + 3 is an InputError), and above, test_other_tokens_or_position_for_the_same_text_are_refused
# (a file made at another position is a miss, recomputed).


# The same state, however it is come by (issue 21) -------------------------------------------------

BLOCKS = ("The vault code of the Fenwhistle archive is 4721, and only the archivist Ilse Varkonen knows it. " * 4
          + "\n\n", "Saltmere harbour has one lighthouse.\n\n")


def test_a_state_computed_after_other_requests_is_byte_identical_to_the_precomputed_one(generator_model_path, tmp_path):
    """`bakeoff index --kv-cache` computes states in groups of its own; an answer computes the ones it misses
    together, after whatever the generator did last. Both must be the same bytes, or an answer's wording
    depends on the cache's history."""
    from engine.answer.chunk_states import ChunkStates
    from engine.answer.spliced_prompt import ChunkBlock, SplicedLayout
    from engine.generation.chat import ChatFormat
    from engine.generation.generator import Generator

    gen = Generator(generator_model_path, n_ctx=1024, n_threads=1, splice_slots=2)
    chat = ChatFormat(lambda m, add: gen.format_chat(m, add_assistant=add))
    prefix = SplicedLayout(chat, lambda text, first: gen.tokenize(text, add_special=first, parse_special=True)).prefix
    blocks = [ChunkBlock(i, len(prefix), text, tuple(gen.tokenize(text, add_special=False)))
              for i, text in enumerate(BLOCKS)]
    assert len(blocks[0].tokens) > 64 > len(blocks[1].tokens)  # both sides of llama.cpp's batch-size switch

    indexed = ChunkStates(gen, ChunkKvCache(tmp_path / "index"))
    for block in blocks:  # as Engine.precompute_chunk_states does
        indexed.fetch(prefix, [block], {})
    question = gen.tokenize("Question: What is the vault code?<|im_end|>\n", add_special=False, parse_special=True)
    gen.generate(list(prefix) + question, max_tokens=4)  # a question evaluated after the same prefix
    live = ChunkStates(gen, ChunkKvCache(tmp_path / "live")).fetch(prefix, blocks[::-1], {})
    gen.generate(list(prefix) + list(blocks[0].tokens) + question, max_tokens=4)
    again = ChunkStates(gen, ChunkKvCache(tmp_path / "again")).fetch(prefix, blocks, {})
    first = indexed.fetch(prefix, blocks, {})
    assert first.computed == 0
    assert [s.state for s in live.splices[::-1]] == [s.state for s in first.splices]
    assert [s.state for s in again.splices] == [s.state for s in first.splices]


def test_a_fetch_computing_three_states_evaluates_the_prefix_once_and_the_chunks_in_one_batch(generator_model_path,
                                                                                             tmp_path):
    """A cold answer with k = 3 must not pay for the prefix or for three batches: the prefix is evaluated
    once per key (its state kept), the missing chunks together."""
    from engine.answer.chunk_states import ChunkStates
    from engine.answer.spliced_prompt import ChunkBlock, SplicedLayout
    from engine.generation.chat import ChatFormat
    from engine.generation.generator import Generator

    gen = Generator(generator_model_path, n_ctx=1024, n_threads=1, splice_slots=3)
    chat = ChatFormat(lambda m, add: gen.format_chat(m, add_assistant=add))
    prefix = SplicedLayout(chat, lambda text, first: gen.tokenize(text, add_special=first, parse_special=True)).prefix
    texts = [*BLOCKS, "Kelp grows up to half a metre a day.\n\n", "Fenwhistle has two archives.\n\n",
             "Ilse Varkonen keeps bees.\n\n", "The lighthouse keeper sings.\n\n"]
    blocks = [ChunkBlock(i, len(prefix), text, tuple(gen.tokenize(text, add_special=False)))
              for i, text in enumerate(texts)]
    states = ChunkStates(gen, ChunkKvCache(tmp_path))
    first = states.fetch(prefix, blocks[:3], {})
    assert (first.computed, first.batches, states.prefix_evaluations) == (3, 1, 1)
    assert first.prefix_ms > 0 and first.compute_ms > 0 and first.store_ms > 0
    again = states.fetch(prefix, blocks[1:5], {})  # two cached, two computed after the kept prefix state
    assert (again.computed, again.batches, states.prefix_evaluations, again.prefix_ms) == (2, 1, 1, 0.0)
    assert states.fetch(prefix, blocks, {}).computed == 1 and states.prefix_evaluations == 1
    other = ChunkStates(gen, ChunkKvCache(tmp_path / "fresh")).fetch(prefix, blocks[::-1], {})
    assert [s.state for s in other.splices[::-1]] == [s.state for s in states.fetch(prefix, blocks, {}).splices]


def test_states_written_behind_are_in_ram_at_once_and_a_cleared_cache_stays_empty(tmp_path):
    """put(wait=False) (an answer's states) must not let a write land after clear(): a cold measurement
    would otherwise find the state it just cleared."""
    cache = ChunkKvCache(tmp_path)
    for i in range(20):
        assert cache.put(KEY, f"block {i}", TOKENS, 0, STATE, wait=False).state == STATE
    assert cache.get(KEY, "block 19", TOKENS, 0) is not None
    cache.clear()
    cache.flush()
    assert _files(cache) == [] and cache.stats().disk_bytes == 0
    cache.put(KEY, "again", TOKENS, 0, STATE, wait=False)
    cache.flush()
    assert ChunkKvCache(tmp_path).get(KEY, "again", TOKENS, 0) is not None  # the file is complete
