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
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from engine import models

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
