"""What a server meets that the library never had to (issue 22): absurd thread counts, hits of the
wrong types, questions of the wrong type, poisoned adapters, and exiting with requests in flight.
Each is a typed error or a clean exit, never a crash, a hang or a TypeError from deep inside."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest
from lora_files import write_lora

from engine.errors import AdapterError, EngineClosedError, InputError
from engine.facade import Engine
from engine.generation.generator import Generator
from engine.hardware import max_threads
from engine.kb import Hit

HIT = Hit(chunk_id=1, text="The Brookling B5 pump has a five-year warranty.", source="/docs/pumps.md",
          span=(0, 47), heading="Pumps", score=1.0)


@pytest.fixture(scope="module")
def engine(generator_model_path, tmp_path_factory):
    adapter = write_lora(tmp_path_factory.mktemp("lora") / "adapter.gguf")
    with Engine(generator_model_path, adapter=adapter, n_ctx=512, n_threads=1) as built:
        yield built


@pytest.mark.parametrize("threads", [100_000, 10_000, 4_096])
def test_generator_thread_counts_are_bounded_with_a_typed_error_naming_the_limit(generator_model_path, threads):
    with pytest.raises(InputError, match=f"n_threads={threads} is more than the {max_threads()} threads"):
        Generator(generator_model_path, n_ctx=256, n_threads=threads)


def test_embedder_thread_counts_are_bounded(embedder_dir):
    from engine.embedding.embedder import Embedder

    with pytest.raises(InputError, match=f"threads=100000 is more than the {max_threads()} threads"):
        Embedder(embedder_dir, threads=100_000)


def test_bakeoff_ask_with_absurd_threads_exits_1_with_the_limit(generator_model_path, tmp_path):
    done = subprocess.run([sys.executable, "-m", "engine", "ask", "Hi", "--mode", "baked", "--adapter",
                           str(write_lora(tmp_path / "a.gguf")), "--threads", "100000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "n_threads=100000 is more than the" in done.stderr


@pytest.mark.parametrize("field, value", [("text", None), ("text", b"bytes"), ("text", 7), ("source", None),
                                          ("source", 7), ("heading", None), ("span", None), ("chunk_id", "1")])
@pytest.mark.parametrize("mode", ["rag", "hybrid"])
def test_hits_of_the_wrong_type_are_input_errors_in_every_mode(engine, mode, field, value):
    bad = dataclasses.replace(HIT, **{field: value})
    with pytest.raises(InputError, match=f"passages\\[1\\]\\.?{field if field not in ('span', 'chunk_id') else ''}"):
        engine.ask("How long is the warranty?", mode, passages=[HIT, bad], max_tokens=2)
    for splice in ("prefill",):
        with pytest.raises(InputError):
            engine.ask("How long is the warranty?", mode, passages=[bad], max_tokens=2, splice=splice)
    with pytest.raises(InputError):
        engine.stream("How long is the warranty?", mode, passages=[bad], max_tokens=2)


@pytest.mark.parametrize("question, kind", [(None, "NoneType"), (b"What?", "bytes"), (123, "int"),
                                            (["What?"], "list")])
@pytest.mark.parametrize("mode", ["rag", "baked", "hybrid"])
def test_a_question_of_the_wrong_type_says_what_type_it_is(engine, question, kind, mode):
    with pytest.raises(InputError, match=f"the question must be a str, got {kind}"):
        engine.ask(question, mode, passages=None if mode == "baked" else [HIT], max_tokens=2)


def test_an_adapter_with_nan_weights_is_refused_at_load(generator_model_path, tmp_path):
    gen = Generator(generator_model_path, n_ctx=256, n_threads=1)
    for poison in (float("nan"), float("inf")):
        with pytest.raises(AdapterError, match="NaN or infinite"):
            gen.load_adapter(write_lora(tmp_path / f"poisoned-{poison}.gguf", poison=poison))
    assert gen.adapters == ()
    gen.load_adapter(write_lora(tmp_path / "fine.gguf"))


def test_a_closed_engine_refuses_new_questions(generator_model_path):
    engine = Engine(generator_model_path, n_ctx=256, n_threads=1)
    engine.close()
    with pytest.raises(EngineClosedError, match="closed"):
        engine.ask("Hi", passages=[HIT], max_tokens=2)


@pytest.fixture(scope="module")
def built_kb(embedder_dir, tmp_path_factory):
    """A knowledge base of three bundled documents."""
    from engine.kb import KnowledgeBase
    from engine.questions.qa import BUNDLED_SET

    docs = sorted((BUNDLED_SET / "docs").glob("*.md"))[:3]
    with KnowledgeBase.build(docs, tmp_path_factory.mktemp("kb") / "kb") as kb:
        return kb.path


def test_engines_and_generators_are_freed_when_dropped(generator_model_path):
    """The process-wide shutdown gate holds them weakly (it must not keep every model ever loaded alive)."""
    import gc
    import weakref

    engine = Engine(generator_model_path, n_ctx=256, n_threads=1)
    gone = [weakref.ref(engine), weakref.ref(engine.generator)]
    del engine
    gc.collect()
    assert [ref() for ref in gone] == [None, None]


EXIT_WITH_THREADS = """
import sys, threading, time
from engine.facade import Engine
from engine.kb import KnowledgeBase
kb = KnowledgeBase.open(sys.argv[1])
engine = Engine(sys.argv[2], kb=sys.argv[1], n_ctx=1024, n_threads=1)
started = threading.Barrier(5)
def search():
    started.wait()
    while True:
        kb.search("How long is the warranty of the pump?", k=4)
def ask():
    started.wait()
    while True:
        engine.ask("Who founded Fenwhistle?", max_tokens=64)
for target in (search, search, ask, ask):
    threading.Thread(target=target, daemon=True).start()
started.wait()
time.sleep(float(sys.argv[3]))
if sys.argv[4] == "close":
    kb.close()
    engine.close()
print("exiting", flush=True)
"""


@pytest.mark.parametrize("close", ["close", "exit"])
def test_exiting_with_daemon_threads_searching_and_asking_is_clean(built_kb, generator_model_path, tmp_path, close):
    script = tmp_path / "exit_with_threads.py"
    script.write_text(textwrap.dedent(EXIT_WITH_THREADS))
    for delay in ("0.3", "1.5"):
        done = subprocess.run([sys.executable, str(script), str(built_kb), str(generator_model_path), delay, close],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "exiting" in done.stdout
        assert "terminate called" not in done.stderr and "gdb" not in done.stderr.lower(), done.stderr[-3000:]
