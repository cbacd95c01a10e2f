"""Generation: a GGUF model through llama.cpp (``engine._core``), and what a request needs around it.

``generator`` (the ``Generator``: one model, one context, one request at a time), ``types``
(its config, sampling and result types, argument checks), ``requests`` (one request checked and
made native), ``adapters`` (the LoRA adapters loaded and chosen per request), ``stream``
(``TextStream``), ``threads`` (the measured thread count), ``chat`` (system prompts and the
model's own chat template), ``tokenizer`` (the tokenizing policies inference and training share),
``splice`` and ``kv_cache`` (chunk states spliced into a prompt, kept in RAM and on disk).
"""
