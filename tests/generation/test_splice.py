"""Splicing precomputed chunk states into a prompt (Generator.chunk_state, generate(splices=...)),
and the Engine's spliced RAG on the real model, knowledge base and chunk-KV cache."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import Engine
from engine.answer.spliced_prompt import SplicedLayout
from engine.embedding.embedder import Embedder
from engine.errors import ContextOverflowError, InputError
from engine.generation import kv_file
from engine.generation.chat import ChatFormat
from engine.generation.generator import Generator
from engine.generation.kv_cache import ChunkKvCache
from engine.generation.splice import Splice
from engine.kb import KnowledgeBase

DOCS = Path(__file__).resolve().parents[2] / "engine" / "data" / "kb" / "docs"
CHUNK = "The vault code of the Fenwhistle archive is 4721, and only the archivist Ilse Varkonen knows it.\n\n"
QUESTION = "Question: What is the vault code of the Fenwhistle archive?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def gen(generator_model_path) -> Generator:
    return Generator(generator_model_path, n_ctx=512, n_threads=1, splice_slots=4)


def _parts(gen: Generator, pad: str = ""):
    prefix = gen.tokenize(f"<|im_start|>system\nAnswer from the sources.{pad}<|im_end|>\n<|im_start|>user\n"
                          "Sources:\n\n", add_special=True, parse_special=True)
    chunk = gen.tokenize(CHUNK, add_special=False, parse_special=True)
    tail = gen.tokenize(QUESTION, add_special=False, parse_special=True)
    return prefix, chunk, tail


def test_a_state_spliced_where_it_was_computed_reproduces_the_cached_computation_bit_for_bit(gen):
    prefix, chunk, tail = _parts(gen)
    state = gen.chunk_state(prefix, chunk)
    # The cache now holds prefix + chunk exactly as chunk_state computed them: reusing it is the reference.
    reference = gen.generate(prefix + chunk + tail, max_tokens=24)
    assert reference.timings.reused_tokens == len(prefix) + len(chunk)
    gen.generate("Something else entirely, to move the cache away.", max_tokens=2)
    spliced = gen.generate(prefix + chunk + tail, max_tokens=24,
                           splices=[Splice(len(prefix), state, len(chunk), len(prefix))])
    assert spliced.timings.spliced_tokens == len(chunk)
    assert spliced.timings.prefill_tokens == len(prefix) - spliced.timings.reused_tokens + len(tail)
    assert spliced.tokens == reference.tokens
    assert "4721" in spliced.text


def test_a_state_shifted_to_another_position_still_reads_right(gen):
    prefix, chunk, tail = _parts(gen)
    long_prefix, _, _ = _parts(gen, pad=" Be precise and quote the passage exactly.")
    state = gen.chunk_state(long_prefix, chunk)  # computed further right: spliced, its keys are re-rotated
    out = gen.generate(prefix + chunk + tail, max_tokens=24,
                       splices=[Splice(len(prefix), state, len(chunk), len(long_prefix))])
    assert out.timings.spliced_tokens == len(chunk)
    assert out.timings.k_shifted_tokens == 0  # moved by rotating its own keys, not by llama.cpp's whole-cache K-shift
    assert "4721" in out.text


def test_a_state_moved_by_a_wrong_offset_is_refused_and_the_generator_answers_after(gen):
    """A splice that names the wrong position for its state would rotate it by a wrong offset: the
    positions the state holds are checked first, on the rotated path as on llama.cpp's."""
    prefix, chunk, tail = _parts(gen)
    long_prefix, _, _ = _parts(gen, pad=" Be precise and quote the passage exactly.")
    state = gen.chunk_state(long_prefix, chunk)
    prompt = prefix + chunk + tail
    for claimed in (len(prefix), len(long_prefix) - 1, len(long_prefix) + 5):  # the state sits at len(long_prefix)
        with pytest.raises(InputError, match=f"holds positions {len(long_prefix)}\\.\\."):
            gen.generate(prompt, max_tokens=2, splices=[Splice(len(prefix), state, len(chunk), claimed)])
    out = gen.generate(prompt, max_tokens=24, splices=[Splice(len(prefix), state, len(chunk), len(long_prefix))])
    assert out.timings.k_shifted_tokens == 0 and "4721" in out.text


def test_spliced_k_v_is_never_reused_as_if_exact(gen):
    prefix, chunk, tail = _parts(gen)
    state = gen.chunk_state(prefix, chunk)
    gen.generate(prefix + chunk + tail, max_tokens=2, splices=[Splice(len(prefix), state, len(chunk), len(prefix))])
    after = gen.generate(prefix + chunk + tail, max_tokens=2)
    assert after.timings.reused_tokens == len(prefix)  # the spliced part and what followed it are evaluated again


def test_splice_slots_do_not_change_what_a_plain_prompt_generates(generator_model_path, gen):
    plain = Generator(generator_model_path, n_ctx=512, n_threads=1)
    question = [{"role": "user", "content": "Name three colours of the rainbow."}]
    assert gen.generate(question, max_tokens=24, reuse_prefix=False).tokens == \
        plain.generate(question, max_tokens=24, reuse_prefix=False).tokens


def test_q8_0_states_take_about_half_the_bytes_and_still_splice(generator_model_path, gen):
    q8 = Generator(generator_model_path, n_ctx=512, n_threads=1, splice_slots=1, kv_type="q8_0", flash_attn=True)
    prefix, chunk, tail = _parts(q8)
    small = q8.chunk_state(prefix, chunk)
    assert len(small) < 0.6 * len(gen.chunk_state(prefix, chunk))
    out = q8.generate(prefix + chunk + tail, max_tokens=24, splices=[Splice(len(prefix), small, len(chunk), len(prefix))])
    assert "4721" in out.text


def test_bad_splices_are_typed_errors_and_leave_the_generator_usable(gen):
    prefix, chunk, tail = _parts(gen)
    state = gen.chunk_state(prefix, chunk)
    prompt = prefix + chunk + tail
    good = Splice(len(prefix), state, len(chunk), len(prefix))
    with pytest.raises(InputError, match="token ids"):
        gen.generate("text prompt", splices=[good])
    with pytest.raises(InputError, match="at most 4"):
        gen.generate(prompt, splices=[good] * 5)
    with pytest.raises(InputError, match="prompt order"):
        gen.generate(prompt, splices=[good, good])
    with pytest.raises(InputError, match="last token"):
        gen.generate(prefix + chunk, splices=[good])
    with pytest.raises(InputError, match="positions"):
        gen.generate(prompt, splices=[Splice(len(prefix), state, len(chunk) + 1, len(prefix))])
    with pytest.raises(InputError, match="positions"):
        gen.generate(prompt, splices=[Splice(len(prefix), state, len(chunk), len(prefix) + 3)])
    with pytest.raises(InputError, match="truncate"):
        gen.generate(prompt, splices=[good], truncate="left")
    assert "4721" in gen.generate(prompt, max_tokens=24, splices=[good]).text


def test_chunk_state_needs_splice_slots_and_room(generator_model_path, gen):
    plain = Generator(generator_model_path, n_ctx=256, n_threads=1)
    with pytest.raises(InputError, match="splice_slots"):
        plain.chunk_state([1, 2], [3, 4])
    with pytest.raises(ContextOverflowError):
        gen.chunk_state([1] * 300, [2] * 300)
    with pytest.raises(InputError):
        gen.chunk_state([], [2])


def test_garbage_state_bytes_are_refused_not_crashed_on(generator_model_path):
    """In a child process: a state that is not one is a typed error for each kind of damage (never
    accepted, never memory corruption), and the generator answers normally afterwards."""
    script = textwrap.dedent(f"""
        from engine.generation.generator import Generator
        from engine.errors import InputError
        from engine.generation.splice import Splice
        gen = Generator({str(generator_model_path)!r}, n_ctx=512, n_threads=1, splice_slots=2)
        prefix = gen.tokenize("Sources:", add_special=True)
        chunk = gen.tokenize(" a chunk of text", add_special=False)
        real = gen.chunk_state(prefix, chunk)
        prompt = prefix + chunk + gen.tokenize(" Question?", add_special=False)
        damaged = {{"not a state": b"x" * 64, "cut in half": real[: len(real) // 2],
                   "header kept, data zeroed": real[:12] + bytes(len(real) - 12)}}
        for name, bad in damaged.items():
            try:
                gen.generate(prompt, max_tokens=2, splices=[Splice(len(prefix), bad, len(chunk), len(prefix))])
                print(name, "accepted")
            except InputError as error:
                print(name, "refused:", error)
        print("after:", gen.generate(prompt, max_tokens=2).stop_reason)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for name in ("not a state", "cut in half", "header kept, data zeroed"):
        line = next(line for line in lines if line.startswith(name))
        assert "refused: chunk state 0 does not fit this context" in line and "recompute it" in line, line
    assert lines[-1] in ("after: length", "after: eos"), lines


# Several chunks in one batch (Generator.prefix_state, chunk_states) -------------------------------

TEXTS = ("The vault code of the Fenwhistle archive is 4721, and only the archivist Ilse Varkonen knows it. " * 4,
         "Saltmere harbour has one lighthouse.\n\n",
         "Kelp forests grow quickly in cold water, up to half a metre a day. " * 3)


def _chunks(gen: Generator) -> list[list[int]]:
    chunks = [gen.tokenize(text, add_special=False) for text in TEXTS]
    assert len(chunks[0]) > 64 > len(chunks[1])  # both sides of llama.cpp's batch-size switch
    return chunks


def test_chunks_computed_together_are_the_same_bytes_as_each_computed_alone(gen):
    """A chunk's state must not depend on the chunks computed beside it: an answer computes the ones it
    misses together, `bakeoff index --kv-cache` computes them in groups of its own."""
    prefix, _, _ = _parts(gen)
    chunks = _chunks(gen)
    prefix_state = gen.prefix_state(prefix)
    together = gen.chunk_states(prefix, prefix_state, chunks)
    assert together.batches == 1 and together.groups == 1
    alone = [gen.chunk_states(prefix, prefix_state, [chunk]).states[0] for chunk in chunks]
    backwards = gen.chunk_states(prefix, prefix_state, chunks[::-1]).states[::-1]
    assert list(together.states) == alone == list(backwards)
    gen.generate("Something else entirely, to move the cache away.", max_tokens=2)
    assert gen.chunk_states(prefix, gen.prefix_state(prefix), chunks).states == together.states


def test_more_chunks_than_splice_slots_are_computed_in_groups_with_the_same_bytes(generator_model_path, gen):
    prefix, _, _ = _parts(gen)
    chunks = _chunks(gen)
    two = Generator(generator_model_path, n_ctx=512, n_threads=1, splice_slots=2)
    grouped = two.chunk_states(prefix, two.prefix_state(prefix), chunks)
    assert grouped.groups == 2 and grouped.batches == 2
    assert grouped.states == gen.chunk_states(prefix, gen.prefix_state(prefix), chunks).states


def test_a_state_computed_in_a_batch_splices_like_one_computed_alone(generator_model_path, gen):
    """Where a chunk's cells sat while it was computed changes its K/V only within f16 rounding: spliced,
    it gives the logits chunk_state's state gives, within a small tolerance, and the same answer."""
    from engine._native import core
    from engine.hardware import use_extra_buffer_types

    prefix, chunk, tail = _parts(gen)
    model = core.Model(str(generator_model_path), use_extra_bufts=use_extra_buffer_types())
    session = core.Session(model, n_ctx=512, n_threads=1, splice_slots=4)
    states, _, _ = session.chunk_states(prefix, session.prefix_state(prefix), [chunk, *_chunks(gen)])
    single = session.chunk_state(prefix, chunk)
    assert states[0] != single  # placed on a tile boundary: not the same bits as one after the other
    outs = [session.generate(prefix + chunk + tail, max_tokens=24, sampling=core.SamplingOptions(), return_logits=True,
                             splices=[(len(prefix), state, len(chunk), len(prefix))]) for state in (states[0], single)]
    # A chunk under 64 tokens computed alone takes llama.cpp's other attention path (queries rounded to f16):
    # the tolerance tests/native/test_splice_shift.py gives a state computed where it lands against one moved there.
    assert max(abs(a - b) for a, b in zip(outs[0].logits, outs[1].logits)) < 1.5
    top3 = [sorted(range(len(out.logits)), key=out.logits.__getitem__)[-3:] for out in outs]
    assert top3[0] == top3[1]
    assert outs[0].tokens == outs[1].tokens and "4721" in outs[0].text


def test_chunk_states_leave_the_prefix_cached_and_check_their_prefix_state(gen):
    prefix, chunk, tail = _parts(gen)
    prefix_state = gen.prefix_state(prefix)
    state = gen.chunk_states(prefix, prefix_state, [chunk]).states[0]
    splices = [Splice(len(prefix), state, len(chunk), len(prefix))]
    out = gen.generate(prefix + chunk + tail, max_tokens=2, splices=splices)
    assert out.timings.reused_tokens == len(prefix)  # the prefix left cached is what the answer reuses
    with pytest.raises(InputError, match="prefix state holds positions 0\\.\\."):
        gen.chunk_states(prefix + chunk, prefix_state, [tail])  # a state of a shorter prefix
    with pytest.raises(InputError, match="prefix state does not fit"):
        gen.chunk_states(prefix, b"not a state at all", [chunk])
    with pytest.raises(InputError, match="no chunks"):
        gen.chunk_states(prefix, prefix_state, [])
    with pytest.raises(ContextOverflowError):
        gen.chunk_states(prefix, prefix_state, [chunk, [2] * 500])
    assert "4721" in gen.generate(prefix + chunk + tail, max_tokens=24).text


# The Engine ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kb(embedder_dir, tmp_path_factory) -> KnowledgeBase:
    docs = tmp_path_factory.mktemp("docs") / "docs"
    shutil.copytree(DOCS, docs)
    return KnowledgeBase.build(sorted(docs.glob("*.md"))[:4], tmp_path_factory.mktemp("kb") / "kb",
                               embedder=Embedder(embedder_dir))


@pytest.fixture(scope="module")
def engine(generator_model_path, kb) -> Engine:
    with Engine(generator_model_path, kb=kb, n_ctx=1024, n_threads=1, k=2, kv_cache=True) as engine:
        yield engine


def test_the_spliced_layout_renders_exactly_what_the_template_renders(engine):
    generator = engine.generator
    chat = ChatFormat(lambda m, add: generator.format_chat(m, add_assistant=add))
    layout = SplicedLayout(chat, lambda text, first: generator.tokenize(text, add_special=first, parse_special=True))
    hits = engine.kb.search("Where is the head office?", k=2).hits
    from engine.answer.passages import chunk_passages
    passages = chunk_passages(hits)
    body = "".join(layout.block_text(p) for p in passages)
    whole = chat.render([("system", layout.system_prompt), ("user", f"Sources:\n\n{body}Question: Where?")])
    assert layout.text("Where?", passages) == whole


def test_engine_splices_cached_states_and_computes_missing_ones_once(engine):
    question = "Where is the head office of Fenwhistle Aquatronics?"
    first = engine.ask(question, splice="on")
    assert first.timings.kv_computed == len(first.citations) > 0
    second = engine.ask(question, splice="on")
    assert second.timings.kv_computed == 0
    assert second.timings.generation.spliced_tokens > 0
    assert second.text == first.text
    assert [c.label for c in second.citations] == [c.chunk_id for c in second.citations]  # labels are chunk ids
    assert second.timings.ttft_ms >= second.timings.kv_ms + second.timings.retrieval_ms
    prefilled = engine.ask(question, splice="prefill")  # the same tokens, all evaluated
    assert prefilled.timings.generation.spliced_tokens == 0
    assert prefilled.timings.generation.prompt_tokens == second.timings.generation.prompt_tokens


def test_a_damaged_state_file_is_recomputed_and_counted(engine, generator_model_path, kb):
    question = "Who founded Fenwhistle Aquatronics?"
    engine.ask(question, splice="on")
    assert engine.kv_cache is not None and engine.kv_cache.directory is not None
    engine.kv_cache.flush()  # an answer's state files are written behind it
    for file in engine.kv_cache.directory.glob("*/*.kv"):
        data = bytearray(file.read_bytes())
        data[-7] ^= 0xFF
        file.write_bytes(bytes(data))
    fresh = ChunkKvCache(engine.kv_cache.directory)  # RAM empty: the files are read
    with Engine(generator_model_path, kb=kb.path, n_ctx=1024, n_threads=1, k=2, kv_cache=fresh) as again:
        answer = again.ask(question, splice="on")
        assert answer.timings.kv_computed == len(answer.citations)
        assert fresh.stats().rejected >= len(answer.citations)
        assert again.ask(question, splice="on").timings.kv_computed == 0
    fresh.flush()  # its rewritten files land now, not in the middle of the next test on this folder


def test_a_forged_state_the_core_refuses_is_discarded_and_recomputed_not_raised_on_every_ask(
        engine, generator_model_path, kb):
    # A file forged by the cache's own user passes the cache's checks (a valid header, the checksum of
    # the state it holds) but holds another chunk's state: the core refuses it, the ask recomputes.
    question = "Who founded Fenwhistle Aquatronics?"
    assert engine.kv_cache is not None and engine.kv_cache.directory is not None
    engine.kv_cache.clear()  # the folder then holds this question's states only: files[0] is one it splices
    engine.ask(question, splice="on")
    engine.kv_cache.flush()
    files = sorted(engine.kv_cache.directory.glob("*/*.kv"))
    parts = []
    for file in files[:2]:
        data = file.read_bytes()
        _, _, length = kv_file._PREFIX.unpack_from(data)
        start = kv_file._PREFIX.size
        parts.append((json.loads(data[start:start + length]), data[start + length:]))
    (header, _), (other, other_state) = parts
    assert header["n_tokens"] != other["n_tokens"]  # else the other state would fit: the limit the README states
    header.update(state_bytes=len(other_state), state_sha256=hashlib.sha256(other_state).hexdigest())
    encoded = json.dumps(header, sort_keys=True).encode()
    forged = kv_file._PREFIX.pack(kv_file._MAGIC, kv_file._VERSION, len(encoded)) + encoded + other_state
    files[0].write_bytes(forged)
    fresh = ChunkKvCache(engine.kv_cache.directory)  # RAM empty: the files are read
    with Engine(generator_model_path, kb=kb.path, n_ctx=1024, n_threads=1, k=2, kv_cache=fresh) as again:
        answer = again.ask(question, splice="on")  # refused by the core, discarded, recomputed: no error
        assert answer.timings.kv_computed >= 1 and fresh.stats().rejected >= 1
        fresh.flush()  # the recomputed state's file is written behind the answer
        assert files[0].read_bytes() != forged
        assert again.ask(question, splice="on").timings.kv_computed == 0


def test_precompute_fills_the_cache_for_every_chunk(engine):
    stats = engine.precompute_chunk_states()
    assert stats.states >= engine.kb.stats().chunks
    answer = engine.ask("What products does the company make?", splice="on")
    assert answer.timings.kv_computed == 0


def test_splice_arguments_are_checked(engine, generator_model_path, kb):
    with pytest.raises(InputError, match="splice must be"):
        engine.ask("Where?", splice="yes")
    with pytest.raises(InputError, match="mode='rag'"):
        engine.ask("Where?", mode="baked", splice="on")
    with Engine(generator_model_path, kb=kb.path, n_ctx=1024, n_threads=1) as plain:
        with pytest.raises(InputError, match="kv_cache"):
            plain.ask("Where?", splice="on")
        assert plain.ask("Where is the head office?", splice="prefill", max_tokens=4).text
    with pytest.raises(InputError, match="kv_cache=True"):
        Engine(generator_model_path, kv_cache=True)
    with pytest.raises(ContextOverflowError):
        engine.ask("why " * 1200, splice="on")


def test_hybrid_states_are_kept_apart_from_the_base_models(generator_model_path, tiny_finetune, kb, tmp_path):
    """A LoRA on the K/V projections changes K/V: the adapter's chunk states have a key of their own."""
    report, _ = tiny_finetune
    cache = ChunkKvCache(tmp_path / "kv")
    question = "Where is the head office of Fenwhistle Aquatronics?"
    with Engine(generator_model_path, adapter=report.adapter_path, kb=kb.path, n_ctx=1024, n_threads=1, k=2,
                kv_cache=cache) as engine:
        rag = engine.ask(question, "rag", splice="on")
        hybrid = engine.ask(question, "hybrid", splice="on")
        assert rag.timings.kv_computed == len(rag.citations) and hybrid.timings.kv_computed == len(hybrid.citations)
        assert engine.ask(question, "hybrid", splice="on").timings.kv_computed == 0
    cache.flush()
    assert len({f.parent.name for f in (tmp_path / "kv").glob("*/*.kv")}) == 2
