"""Moving a spliced chunk state by rotating its own keys (csrc/state_shift.h) instead of
llama.cpp's K-shift over the whole cache: the logits after the prompt are those of the
K-shift path, and those of the same chunk's state computed where it lands."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# The child prints JSON: for each flash-attention setting and offset, the logits compared.
SCRIPT = """
    import ctypes, json
    import numpy as np
    import llama_cpp as L
    from engine._native import core

    MODEL = {model!r}
    model = core.Model(MODEL, use_extra_bufts=False)
    prefix = model.tokenize("<|im_start|>system\\nAnswer from the sources.<|im_end|>\\n"
                            "<|im_start|>user\\nSources:\\n\\n", parse_special=True)
    chunk = model.tokenize("The vault code of the Fenwhistle archive is 4721, and only the archivist Ilse Varkonen "
                           "knows it. The archive opens at nine and closes at five, except on Sundays.\\n\\n",
                           add_special=False)
    tail = model.tokenize("Question: What is the vault code of the Fenwhistle archive?<|im_end|>\\n"
                          "<|im_start|>assistant\\n", add_special=False, parse_special=True)
    filler = model.tokenize(" The reading room is quiet." * 80, add_special=False)

    def computed_at(offset, flash_attn):
        # prefix + chunk evaluated at positions offset.. through llama.cpp's C API (our Session always
        # starts at 0): the chunk's state as if computed where it lands. Same context settings as a Session.
        params = L.llama_model_default_params()
        params.use_extra_bufts = False
        lm = L.llama_model_load_from_file(MODEL.encode(), params)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = 2048, 512, 512, 3, True
        cp.n_threads = cp.n_threads_batch = 1
        cp.flash_attn_type = flash_attn
        ctx = L.llama_init_from_model(lm, cp)
        tokens = prefix + chunk
        batch = L.llama_batch_init(len(tokens), 0, 1)
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, offset + i, 1, i == len(tokens) - 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        assert L.llama_decode(ctx, batch) == 0
        L.llama_memory_seq_cp(L.llama_get_memory(ctx), 0, 1, offset + len(prefix), offset + len(tokens))
        size = L.llama_state_seq_get_size(ctx, 1)
        buf = (ctypes.c_uint8 * size)()
        assert L.llama_state_seq_get_data(ctx, buf, size, 1) == size
        L.llama_batch_free(batch); L.llama_free(ctx); L.llama_model_free(lm)
        return bytes(buf)

    report = []
    sampling = core.SamplingOptions()
    for flash_attn in (0, 1):
        for delta in (24, 300):
            p = len(prefix)
            prompt = prefix + filler[:delta] + chunk + tail
            row = {{"flash_attn": flash_attn, "delta": delta}}
            logits = {{}}
            for way, rotate in (("rotated", True), ("k_shift", False)):
                session = core.Session(model, n_ctx=2048, splice_slots=2, rotate_splices=rotate,
                                       flash_attn=flash_attn)
                state = session.chunk_state(prefix, chunk)  # at positions p..
                session.reset()
                out = session.generate(prompt, max_tokens=1, sampling=sampling, return_logits=True,
                                       splices=[(p + delta, state, len(chunk), p)])
                logits[way] = np.array(out.logits)
                row[way + "_k_shifted_tokens"] = out.timings.k_shifted_tokens
                row[way + "_shift"] = session.splice_shift
                if rotate:
                    row["computed_at_0_is_chunk_state"] = computed_at(0, flash_attn) == state
                    session.reset()
                    there = session.generate(prompt, max_tokens=1, sampling=sampling, return_logits=True,
                                             splices=[(p + delta, computed_at(delta, flash_attn), len(chunk), p + delta)])
                    logits["there"] = np.array(there.logits)
            for a, b in (("rotated", "k_shift"), ("rotated", "there"), ("k_shift", "there")):
                row[f"{{a}}_vs_{{b}}_max_abs"] = float(np.abs(logits[a] - logits[b]).max())
            row["top5"] = {{way: np.argsort(-l)[:5].tolist() for way, l in logits.items()}}
            row["logit_range"] = float(logits["there"].max() - logits["there"].min())
            report.append(row)
    print(json.dumps(report))
"""


def test_a_state_rotated_into_place_gives_the_logits_of_the_k_shift_and_of_a_state_computed_there(
        generator_model_path):
    """In a child process (native code, a second libllama context through llama_cpp's C API).

    Tolerances, from measurement (SmolLM2-135M Q4_1, f16 K/V): our rotation fuses its products
    as llama.cpp's CPU RoPE does, so its keys equal the K-shift's bit for bit and so do the
    logits (the Session's one-time check would accept 2 f16 steps; none are seen). Against the
    chunk's state computed where it lands, both paths differ by the same 0.70-0.90 in the
    largest logit (of a ~30 range): rounding, as f16 keys computed at one position and rotated
    are not the f16 keys computed at another, and the same prompt evaluated in full with flash
    attention on and off differs by ~0.6. The tolerance is 1.5, with the first three tokens equal.
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT.format(model=str(generator_model_path)))],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report) == 4
    for row in report:
        assert row["computed_at_0_is_chunk_state"], row  # the reference computes what chunk_state computes
        assert row["rotated_shift"] == "rotated" and row["rotated_k_shifted_tokens"] == 0, row
        assert row["k_shift_k_shifted_tokens"] > 0, row
        assert row["rotated_vs_k_shift_max_abs"] == 0.0, row
        assert row["rotated_vs_there_max_abs"] <= 1.5, row
        assert row["rotated_vs_there_max_abs"] == row["k_shift_vs_there_max_abs"], row
        assert row["top5"]["rotated"][:3] == row["top5"]["there"][:3], row


def test_a_state_of_quantized_keys_is_left_to_the_k_shift_and_still_splices(generator_model_path):
    """q8_0 keys are not a layout the rotation reads: the state is moved by llama.cpp, as before."""
    script = textwrap.dedent(f"""
        from engine._native import core
        model = core.Model({str(generator_model_path)!r}, use_extra_bufts=False)
        session = core.Session(model, n_ctx=512, splice_slots=1, kv_type="q8_0", flash_attn=1)
        prefix = model.tokenize("<|im_start|>system\\nAnswer from the sources.<|im_end|>\\n<|im_start|>user\\n",
                                parse_special=True)
        chunk = model.tokenize("The vault code of the Fenwhistle archive is 4721. ", add_special=False)
        tail = model.tokenize("What is the vault code?<|im_end|>\\n<|im_start|>assistant\\n", add_special=False,
                              parse_special=True)
        state = session.chunk_state(prefix, chunk)
        pad = model.tokenize(" Be precise.", add_special=False)
        out = session.generate(prefix + pad + chunk + tail, max_tokens=12, sampling=core.SamplingOptions(),
                               splices=[(len(prefix) + len(pad), state, len(chunk), len(prefix))])
        print(out.timings.k_shifted_tokens == len(chunk), "4721" in out.text, session.splice_shift)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == ["True", "True"], done.stdout
