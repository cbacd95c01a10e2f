"""Export a BERT sentence embedder (all-MiniLM-L6-v2) from safetensors to an ONNX graph.

The graph is written directly with ``onnx.helper`` from ``model.safetensors`` and
``config.json``; no torch is needed at fetch time. It uses the fused
``com.microsoft`` operators that onnxruntime's CPU provider runs fastest
(``EmbedLayerNormalization``, ``Attention``, ``SkipLayerNormalization``,
``BiasGelu``: exact erf GELU), i.e. the graph ``onnxruntime.transformers.optimizer``
would produce from a plain export, without depending on that optimizer's pattern
matching. Mean pooling over ``attention_mask`` and L2 normalisation are part of
the graph, so its output ``sentence_embedding`` is what sentence-transformers returns.

Inputs: ``input_ids`` and ``attention_mask``, int64 ``[batch, seq]``; token type
ids are always 0 (the type-0 row is folded into the position table).

``export_embedder`` writes the fp32 graph and its two int8 variants (made by
``engine.embedding.quantize`` from a smoothed build of the same graph) under the file
names below, the one place they are named. ``onnx`` is imported inside the functions
that build graphs, so the embedder and the model cache can import these names
without loading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine._files import write_bytes_atomic
from engine.embedding import quantize as onnx_quantize
from engine.errors import ModelError
from engine.models.registry import FP32_NAME, INT8_FULL_NAME, INT8_NAME

if TYPE_CHECKING:
    import onnx

OUTPUT_NAME = "sentence_embedding"
_OPSET = 17
_MS_OPSET = 1
_PRODUCER = "bakeoff.onnx_export"


@dataclass(frozen=True)
class BertConfig:
    """The parts of a BERT ``config.json`` the exporter needs."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_positions: int
    vocab_size: int

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        """Read and check ``config.json``; raises ``ModelError`` for unsupported models."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read {path} ({error}): run `bakeoff models fetch` again") from error
        if raw.get("model_type") != "bert" or raw.get("hidden_act", "gelu") != "gelu":
            raise ModelError(f"{path} is not a BERT model with exact GELU: only those can be exported")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"{path}: only absolute position embeddings are supported")
        try:
            return cls(
                hidden_size=int(raw["hidden_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                max_positions=int(raw["max_position_embeddings"]),
                vocab_size=int(raw["vocab_size"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"{path} lacks a BERT field ({error}): run `bakeoff models fetch` again") from error


def export_embedder(model_dir: Path) -> list[Path]:
    """Write ``model.onnx`` (fp32), ``model.int8.onnx`` and ``model.int8-full.onnx`` into ``model_dir``.

    ``model.int8.onnx`` keeps the FFN-down matmuls fp32: it embeds documents as well as
    queries, and those six matmuls are most of int8's error on long texts.
    ``model.int8-full.onnx`` quantizes every weight matmul: a knowledge base built with fp32
    embeds its queries with it (``engine/kb/query_cache.py``), where it loses no recall on
    the bundled questions and is the fastest graph for a short query.

    Args:
        model_dir: folder holding ``model.safetensors``, ``config.json`` and ``tokenizer.json``
            (the tokenizer feeds the int8 calibration sentences).

    Returns:
        The paths written, fp32 first. Each file is written to a temporary name and
        renamed into place, so a failure never leaves a partial graph behind; the
        bytes are a pure function of the weights (exporting twice is identical).

    Raises:
        ModelError: the weights or the config are missing, truncated or not a BERT.
    """
    model_dir = Path(model_dir)
    config = BertConfig.from_file(model_dir / "config.json")
    weights = _load_weights(model_dir / "model.safetensors", config)
    fp32 = build_graph(weights, config)
    sites = _smoothing_sites(weights, config)
    peaks = onnx_quantize.activation_peaks(fp32, model_dir / "tokenizer.json",
                                           [tensor for tensor, _ in sites.values()])
    scales = onnx_quantize.smoothing_scales({site: weight for site, (_, weight) in sites.items()},
                                            {site: peaks[tensor] for site, (tensor, _) in sites.items()})
    smoothed = build_graph(weights, config, scales)
    fp32_path = write_bytes_atomic(model_dir / FP32_NAME, fp32.SerializeToString(deterministic=True))
    # The FFN-down matmuls stay fp32: see onnx_quantize.quantize_int8 for the measurements.
    int8_path = onnx_quantize.quantize_int8(smoothed, model_dir / INT8_NAME,
                                            keep_fp32=[f"layer{i}_ffn_down" for i in range(config.num_layers)])
    full_path = onnx_quantize.quantize_int8(smoothed, model_dir / INT8_FULL_NAME)
    return [fp32_path, int8_path, full_path]


def _load_weights(path: Path, config: BertConfig) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors file as float32, checked against the config."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as error:
        raise ModelError(
            f"cannot read the weights {path} ({error}): the file is missing or corrupted; "
            f"run `bakeoff models fetch`"
        ) from error
    weights = {_strip_prefix(name): tensor for name, tensor in raw.items()}
    h, i = config.hidden_size, config.intermediate_size
    expected = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (config.max_positions, h),
        "embeddings.token_type_embeddings.weight": None,
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for layer in range(config.num_layers):
        p = f"encoder.layer.{layer}."
        for part in ("query", "key", "value"):
            expected[p + f"attention.self.{part}.weight"] = (h, h)
            expected[p + f"attention.self.{part}.bias"] = (h,)
        expected.update({
            p + "attention.output.dense.weight": (h, h),
            p + "attention.output.dense.bias": (h,),
            p + "attention.output.LayerNorm.weight": (h,),
            p + "attention.output.LayerNorm.bias": (h,),
            p + "intermediate.dense.weight": (i, h),
            p + "intermediate.dense.bias": (i,),
            p + "output.dense.weight": (h, i),
            p + "output.dense.bias": (h,),
            p + "output.LayerNorm.weight": (h,),
            p + "output.LayerNorm.bias": (h,),
        })
    for name, shape in expected.items():
        if name not in weights:
            raise ModelError(f"{path} has no tensor {name!r}: it is not a {config.num_layers}-layer BERT")
        if shape is not None and weights[name].shape != shape:
            raise ModelError(f"{path}: {name} has shape {weights[name].shape}, expected {shape}")
    return {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in expected}


def _strip_prefix(name: str) -> str:
    # Some checkpoints are saved from BertForX wrappers and prefix every name with "bert.".
    return name[len("bert."):] if name.startswith("bert.") else name


def build_graph(
    weights: dict[str, np.ndarray], config: BertConfig, smoothing: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """The fp32 ONNX model of the encoder with mean pooling and L2 normalisation.

    ``smoothing`` maps a matmul site (``layer{i}_qkv``, ``layer{i}_ffn_up``) to per-input-
    channel powers of two ``s``: the activation is multiplied by ``1/s`` and the weight
    rows by ``s``, which leaves the function unchanged (exactly, being powers of two)
    but moves activation outliers into the weights before int8 quantization.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    smoothing = smoothing or {}
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    typed: list[onnx.ValueInfoProto] = []

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        if domain:
            # Shape inference cannot see through contrib ops; the quantizer needs their types.
            typed.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "sequence", None]))
        return output

    def smooth(site: str, activation: str, weight: np.ndarray) -> tuple[str, np.ndarray]:
        if site not in smoothing:
            return activation, weight
        scale = smoothing[site].astype(np.float32)
        inverse = const(f"{site}_smooth", (1.0 / scale).astype(np.float32))
        return node("Mul", [activation, inverse], f"{site}_smoothed"), weight * scale[:, None]

    eps = config.layer_norm_eps
    w = weights
    ids32 = node("Cast", ["input_ids"], "input_ids_int32", to=TensorProto.INT32)
    mask32 = node("Cast", ["attention_mask"], "attention_mask_int32", to=TensorProto.INT32)
    # Token type ids are always 0: adding the type-0 row to every position row is exact.
    positions = w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    # EmbedLayerNormalization must also emit its (unused) mask index; Attention gets the
    # raw 2-D mask instead, which stays correct whatever the padding side.
    x = "embeddings"
    nodes.append(helper.make_node(
        "EmbedLayerNormalization",
        [ids32, "", const("word_embeddings", w["embeddings.word_embeddings.weight"]),
         const("position_embeddings", positions), "",
         const("embeddings_ln_gamma", w["embeddings.LayerNorm.weight"]),
         const("embeddings_ln_beta", w["embeddings.LayerNorm.bias"]), mask32],
        [x, "embeddings_mask_index"], name=x, domain="com.microsoft", epsilon=eps,
    ))
    typed.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "sequence", None]))
    for layer in range(config.num_layers):
        p = f"encoder.layer.{layer}."
        n = f"layer{layer}"
        qkv_weight = np.concatenate(
            [w[p + f"attention.self.{part}.weight"].T for part in ("query", "key", "value")], axis=1)
        qkv_bias = np.concatenate([w[p + f"attention.self.{part}.bias"] for part in ("query", "key", "value")])
        qkv_in, qkv_weight = smooth(f"{n}_qkv", x, qkv_weight)
        attention = node(
            "Attention", [qkv_in, const(f"{n}_qkv_weight", qkv_weight), const(f"{n}_qkv_bias", qkv_bias), mask32],
            f"{n}_attention", domain="com.microsoft", num_heads=config.num_heads,
        )
        projected = node("MatMul", [attention, const(f"{n}_attn_out_weight",
                                                     w[p + "attention.output.dense.weight"].T)],
                         f"{n}_attn_out")
        x = node(
            "SkipLayerNormalization",
            [projected, x, const(f"{n}_attn_ln_gamma", w[p + "attention.output.LayerNorm.weight"]),
             const(f"{n}_attn_ln_beta", w[p + "attention.output.LayerNorm.bias"]),
             const(f"{n}_attn_out_bias", w[p + "attention.output.dense.bias"])],
            f"{n}_attn_ln", domain="com.microsoft", epsilon=eps,
        )
        up_in, up_weight = smooth(f"{n}_ffn_up", x, w[p + "intermediate.dense.weight"].T)
        up = node("MatMul", [up_in, const(f"{n}_ffn_up_weight", up_weight)], f"{n}_ffn_up")
        act = node("BiasGelu", [up, const(f"{n}_ffn_up_bias", w[p + "intermediate.dense.bias"])],
                   f"{n}_ffn_gelu", domain="com.microsoft")
        down = node("MatMul", [act, const(f"{n}_ffn_down_weight", w[p + "output.dense.weight"].T)],
                    f"{n}_ffn_down")
        x = node(
            "SkipLayerNormalization",
            [down, x, const(f"{n}_ffn_ln_gamma", w[p + "output.LayerNorm.weight"]),
             const(f"{n}_ffn_ln_beta", w[p + "output.LayerNorm.bias"]),
             const(f"{n}_ffn_down_bias", w[p + "output.dense.bias"])],
            f"{n}_ffn_ln", domain="com.microsoft", epsilon=eps,
        )
    _append_pooling(x, node, const)
    graph = helper.make_graph(
        nodes, "bert_mean_pooling",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", config.hidden_size])],
        inits,
        value_info=typed,
    )
    model = helper.make_model(
        graph, producer_name=_PRODUCER, producer_version="1",
        opset_imports=[helper.make_opsetid("", _OPSET), helper.make_opsetid("com.microsoft", _MS_OPSET)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _append_pooling(hidden: str, node, const) -> None:
    """Mean over the unmasked tokens, then divide by the L2 norm (as sentence-transformers)."""
    from onnx import TensorProto

    mask = node("Cast", ["attention_mask"], "pool_mask", to=TensorProto.FLOAT)
    mask3 = node("Unsqueeze", [mask, const("axis_2", np.array([2], dtype=np.int64))], "pool_mask_3d")
    summed = node("ReduceSum", [node("Mul", [hidden, mask3], "pool_masked"),
                                const("axis_1", np.array([1], dtype=np.int64))], "pool_sum", keepdims=0)
    count = node("ReduceSum", [mask, "axis_1"], "pool_count", keepdims=1)
    count = node("Max", [count, const("count_floor", np.array(1e-9, dtype=np.float32))], "pool_count_safe")
    mean = node("Div", [summed, count], "pool_mean")
    squares = node("ReduceSum", [node("Mul", [mean, mean], "pool_sq"), "axis_1"], "pool_sumsq", keepdims=1)
    norm = node("Max", [node("Sqrt", [squares], "pool_norm_raw"),
                        const("norm_floor", np.array(1e-12, dtype=np.float32))], "pool_norm")
    node("Div", [mean, norm], OUTPUT_NAME)


def _smoothing_sites(weights: dict[str, np.ndarray], config: BertConfig) -> dict[str, tuple[str, np.ndarray]]:
    """The matmuls SmoothQuant rescales (``build_graph``'s ``smoothing`` keys): each one
    fed by a LayerNorm (QKV, FFN-up), with the graph tensor that is its activation
    input and its weight as the checkpoint stores it (``[out, in]``). The GELU-fed
    FFN-down is not smoothed: that made int8 worse (``onnx_quantize.quantize_int8``).
    """
    sites = {}
    for layer in range(config.num_layers):
        p = f"encoder.layer.{layer}."
        qkv_input = "embeddings" if layer == 0 else f"layer{layer - 1}_ffn_ln"
        qkv_weight = np.concatenate(
            [weights[p + f"attention.self.{part}.weight"] for part in ("query", "key", "value")])
        sites[f"layer{layer}_qkv"] = (qkv_input, qkv_weight)
        sites[f"layer{layer}_ffn_up"] = (f"layer{layer}_attn_ln", weights[p + "intermediate.dense.weight"])
    return sites
