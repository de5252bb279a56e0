"""Rules for the code itself: the linter is clean, dependencies point the way ARCHITECTURE.md draws them (the
contract in .importlinter), and importing rlpost loads no GPU-only library."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean():
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dependency_contract_holds():
    result = _run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_importing_every_module_loads_no_gpu_only_library():
    """Module import time, which the contract cannot see apart from lazy imports: every rlpost module imports on
    this CPU machine without SGLang or Transformer Engine, and the embedded engine's server without megatron."""
    script = """
import importlib, pkgutil, sys
import rlpost.rollout.engine.server
assert not any(m == "megatron" or m.startswith("megatron.") for m in sys.modules), "the engine imported megatron"
import rlpost
for info in pkgutil.walk_packages(rlpost.__path__, "rlpost."):
    importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("sglang", "transformer_engine"))
assert not bad, bad
"""
    result = _run(sys.executable, "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr
