"""Splice states reach the native core as views of Python's bytes, not copies: the bytes
must stay valid for the whole request, however the caller holds them."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_state_whose_only_reference_is_the_call_splices_like_a_kept_one(generator_model_path):
    """In a child process: were the view to outlive its bytes, this reads freed memory."""
    script = textwrap.dedent(f"""
        import gc
        from engine._native import core
        model = core.Model({str(generator_model_path)!r}, use_extra_bufts=False)
        session = core.Session(model, n_ctx=512, splice_slots=2)
        prefix = model.tokenize("<|im_start|>system\\nAnswer from the sources.<|im_end|>\\n<|im_start|>user\\n",
                                parse_special=True)
        chunk = model.tokenize("The vault code of the Fenwhistle archive is 4721. ", add_special=False)
        tail = model.tokenize("What is the vault code?<|im_end|>\\n<|im_start|>assistant\\n", add_special=False,
                              parse_special=True)
        kept = session.chunk_state(prefix, chunk)
        prompt = prefix + chunk + tail
        sampling = core.SamplingOptions()

        def run(state):
            session.reset()
            return session.generate(prompt, max_tokens=12, sampling=sampling,
                                    splices=[(len(prefix), state, len(chunk), len(prefix))])

        reference = run(kept)
        # A fresh copy referenced by nothing but the argument list, dropped when the call returns.
        fresh = run(bytes(bytearray(kept)))
        gc.collect()
        print("spliced", reference.timings.spliced_tokens == fresh.timings.spliced_tokens == len(chunk))
        print("same", reference.tokens == fresh.tokens)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["spliced True", "same True"], done.stdout
