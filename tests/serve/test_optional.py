"""The server is an optional extra: ``import engine`` never loads it, and without it ``engine.serve``
(and so ``bakeoff serve``) raises MissingExtraError naming the extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.errors import MissingExtraError


def test_importing_engine_does_not_load_the_server_stack():
    code = ("import sys, engine, engine.facade, engine.cli.main\n"
            "loaded = [m for m in ('starlette', 'uvicorn', 'sse_starlette', 'engine.serve') if m in sys.modules]\n"
            "print(loaded)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_the_extra_the_server_says_which_extra_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "engine.serve" or m.startswith("engine.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what an absent package looks like to import
    with pytest.raises(MissingExtraError, match=r"'serve' extra .*uvicorn.*pip install -e '\.\[serve\]'"):
        import engine.serve  # noqa: F401
