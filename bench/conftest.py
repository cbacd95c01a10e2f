"""Shared benchmark plumbing: real models once per session, and the claims table.

Every benchmark that backs a number in the README records it with the ``claims``
fixture: what was measured, the value, its unit, the target and whether it was met.
At the end of the run the table is printed and saved as JSON beside pytest-benchmark's
own output (``bench/results/claims.json``), so the README's table is reproducible
with one command.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from engine import models

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).parent / "results"
_COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Claim:
    """One measured figure, with the target it is held to (if any)."""

    group: str
    name: str
    value: float
    unit: str
    target: str | None
    met: bool | None


class Claims:
    """Collects the figures a benchmark run stands behind."""

    def __init__(self) -> None:
        self.rows: list[Claim] = []

    def add(self, group: str, name: str, value: float, unit: str = "", target: str | None = None) -> Claim:
        """Record a figure. ``target`` is like ``"<= 12"`` or ``">= 0.98"`` (same unit)."""
        met = None
        if target:
            op, bound = target.split()
            met = bool(_COMPARE[op](value, float(bound)))
        claim = Claim(group, name, float(value), unit, target, met)
        self.rows.append(claim)
        return claim


_CLAIMS = Claims()


@pytest.fixture(scope="session")
def claims() -> Claims:
    return _CLAIMS


@pytest.fixture(scope="session")
def generator_model_path() -> Path:
    [fetched] = models.fetch([models.DEFAULT_GENERATOR])
    return fetched.main_path


@pytest.fixture(scope="session")
def embedder_dir() -> Path:
    [fetched] = models.fetch([models.DEFAULT_EMBEDDER])
    return fetched.directory


@pytest.fixture(scope="session")
def adapter_path(tmp_path_factory) -> Path:
    """The LoRA adapter of the baked and hybrid benchmarks.

    ``BAKEOFF_BENCH_ADAPTER`` when set, else the one ``bakeoff run`` trained (``bakeoff-run/quick``,
    then ``full``), else a random LoRA of the right shapes: its timings are those of a trained
    adapter of the same rank (the answers are not).
    """
    if chosen := os.environ.get("BAKEOFF_BENCH_ADAPTER"):
        path = Path(chosen)
        if not path.is_file():
            raise FileNotFoundError(f"BAKEOFF_BENCH_ADAPTER={chosen}: no such file")
        return path
    trained = [ROOT / "bakeoff-run" / p / "adapter.gguf" for p in ("quick", "full")]
    if found := next((p for p in trained if p.is_file()), None):
        return found
    sys.path.insert(0, str(ROOT / "tests"))
    from lora_files import write_lora

    return write_lora(tmp_path_factory.mktemp("adapter") / "random-adapter.gguf")


@pytest.fixture(scope="session")
def peer_llama():
    """A maker of llama-cpp-python ``Llama`` objects set up like the engine: see :func:`_peer_llama`."""
    return _peer_llama


def _peer_llama(model_path: Path, **kwargs):
    """llama-cpp-python's ``Llama`` on ``model_path`` (``kwargs`` as ``Llama`` takes them), with
    llama.cpp's extra CPU buffer types set as the engine's "auto" sets them.

    ``Llama()`` has no argument for them: it starts from ``llama_model_default_params()``, which
    turns them on, and on a CPU built with AMX its multi-token matmul then crashes (SIGILL,
    llama.cpp issue 20824; ``engine.hardware.use_extra_buffer_types``). So the default params
    are wrapped while the model loads. ``extra_buffers`` ("auto", "on", "off") overrides the
    setting. Skips the test when llama-cpp-python is not installed.
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    from engine.hardware import use_extra_buffer_types

    raw = llama_cpp.llama_cpp
    default_params = raw.llama_model_default_params
    use_extra_bufts = use_extra_buffer_types(kwargs.pop("extra_buffers", "auto"))

    def same_model_params():
        params = default_params()
        params.use_extra_bufts = use_extra_bufts
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(raw, "llama_model_default_params", same_model_params)
        llama = llama_cpp.Llama(str(model_path), **kwargs)
    assert llama.model_params.use_extra_bufts == use_extra_bufts
    return llama


def _format(claim: Claim) -> str:
    status = {True: "met", False: "MISSED", None: ""}[claim.met]
    target = f"{claim.target} {claim.unit}" if claim.target else ""
    return f"| {claim.group} | {claim.name} | {claim.value:.4g} {claim.unit} | {target} | {status} |"


def pytest_terminal_summary(terminalreporter) -> None:
    if not _CLAIMS.rows:
        return
    lines = ["| stage | measure | value | target | |", "|---|---|---|---|---|"]
    lines += [_format(c) for c in _CLAIMS.rows]
    terminalreporter.write_sep("=", "bakeoff claims")
    for line in lines:
        terminalreporter.write_line(line)
    RESULTS_DIR.mkdir(exist_ok=True)
    payload = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "claims": [asdict(c) for c in _CLAIMS.rows],
    }
    (RESULTS_DIR / "claims.json").write_text(json.dumps(payload, indent=2))
    (RESULTS_DIR / "claims.md").write_text("\n".join(lines) + "\n")
