"""Sentence embeddings: ``embedder`` (ONNX Runtime sessions over an exported BERT graph), ``export``
(the mean-pooled ONNX graph written from the model's safetensors at fetch time) and ``quantize``
(its int8 variant, checked against fp32)."""
