"""The GPU image's Dockerfile: hadolint passes, and every version it pins satisfies setup.py's requirements (its
install_requires and extras, read from the file itself: an installed package's metadata can be stale)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PINS = {"TORCH_VERSION": "torch", "SGLANG_VERSION": "sglang", "TRANSFORMERS_VERSION": "transformers",
        "MEGATRON_CORE_VERSION": "megatron-core", "RAY_VERSION": "ray",
        "TRANSFORMER_ENGINE_VERSION": "transformer-engine"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _setup_requirements() -> list[str]:
    call = next(node for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup")
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires",
                                                                                     "extras_require")}
    return keywords["install_requires"] + [r for extra in keywords["extras_require"].values() for r in extra]


def test_hadolint():
    result = subprocess.run([Path(sys.executable).parent / "hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pinned_versions_satisfy_setup_py():
    args = dict(re.findall(r"^ARG (\w+_VERSION)=(\S+)$", DOCKERFILE.read_text(), re.M))
    assert set(args) == set(PINS), f"ARG pins {sorted(args)} != checked {sorted(PINS)}"
    wanted = {}
    for line in _setup_requirements():
        req = Requirement(line)
        wanted.setdefault(_canonical(req.name), []).append(req)
    for arg, package in PINS.items():
        reqs = wanted.get(package)
        assert reqs, f"{package} is pinned in the Dockerfile but setup.py does not require it"
        for req in reqs:
            assert req.specifier.contains(Version(args[arg]), prereleases=True), (
                f"Dockerfile {arg}={args[arg]} violates setup.py's '{req}'")
    for arg in PINS:  # every pin is used by an install command
        assert f"${{{arg}}}" in DOCKERFILE.read_text(), f"{arg} is declared but not used"
