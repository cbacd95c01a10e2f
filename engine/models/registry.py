"""The model manifest (``engine/models/models.toml``): which models bakeoff knows and what files each has."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from engine.errors import InputError

MODELS_DIR_ENV = "BAKEOFF_MODELS_DIR"

DEFAULT_GENERATOR = "SmolLM2-135M-Instruct-Q4_1"

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
#: The graphs ``engine.embedding.export`` writes beside an embedder's weights at fetch time
#: (fp32; its int8 quantization with the FFN-down matmuls kept fp32, for documents; every
#: matmul int8, for queries): part of what a fetched embedder holds.
FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
INT8_FULL_NAME = "model.int8-full.onnx"
EXPORTED_NAMES = (FP32_NAME, INT8_NAME, INT8_FULL_NAME)


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its name in the cache, where it sits in the source, its sha256."""

    name: str
    member: str
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the manifest (``engine/models.toml``)."""

    name: str
    role: str
    license: str
    main: str
    files: tuple[ModelFile, ...]
    pypi_package: str
    pypi_version: str
    inner_zip: str | None
    huggingface: str | None
    export: str | None


@dataclass(frozen=True)
class FetchedModel:
    """Result of a fetch: where the model is, and whether anything had to be done."""

    name: str
    role: str
    directory: Path
    main_path: Path
    files: tuple[str, ...]
    downloaded: bool
    size_bytes: int


def load_manifest() -> dict[str, ModelSpec]:
    """Read the manifest shipped in the package, keyed by model name."""
    text = resources.files("engine.models").joinpath("models.toml").read_text(encoding="utf-8")
    specs = {}
    for entry in tomllib.loads(text)["model"]:
        source = entry["source"]
        specs[entry["name"]] = ModelSpec(
            name=entry["name"],
            role=entry["role"],
            license=entry["license"],
            main=entry["main"],
            files=tuple(ModelFile(f["name"], f["member"], f["sha256"]) for f in entry["files"]),
            pypi_package=source["package"],
            pypi_version=source["version"],
            inner_zip=source.get("inner_zip"),
            huggingface=entry.get("huggingface"),
            export=entry.get("export"),
        )
    return specs


def spec(name: str) -> ModelSpec:
    """The manifest entry for ``name``; raises ``InputError`` naming the known models."""
    specs = load_manifest()
    if name not in specs:
        known = ", ".join(sorted(specs))
        raise InputError(f"unknown model {name!r}: known models are {known}")
    return specs[name]


def _expected_names(model: ModelSpec) -> list[str]:
    names = [f.name for f in model.files]
    if model.export:
        names += EXPORTED_NAMES
    return names
