"""The GPU image's Dockerfile: hadolint passes, every version it pins satisfies setup.py's requirements (its
install_requires and extras, read from the file itself: an installed package's metadata can be stale), and the pins
agree with each other as the wheels' metadata says (docker/check_pins.py, offline, on the recorded metadata)."""

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
PINS = {"TORCH_VERSION": "torch", "SGLANG_VERSION": "sglang", "TRANSFORMERS_VERSION": "transformers",
        "MEGATRON_CORE_VERSION": "megatron-core", "RAY_VERSION": "ray",
        "TRANSFORMER_ENGINE_VERSION": "transformer-engine", "FLASHINFER_VERSION": "flashinfer-python"}
# pinned for the image only: SGLang brings it, rlpost does not import it
NOT_IN_SETUP_PY = {"flashinfer-python"}
_spec = importlib.util.spec_from_file_location("check_pins", ROOT / "docker" / "check_pins.py")
check_pins = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_pins)


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
        reqs = wanted.get(package, [])
        assert bool(reqs) != (package in NOT_IN_SETUP_PY), f"setup.py's requirements on {package}: {reqs}"
        for req in reqs:
            assert req.specifier.contains(Version(args[arg]), prereleases=True), (
                f"Dockerfile {arg}={args[arg]} violates setup.py's '{req}'")
    for arg in PINS:  # every pin is used by an install command
        assert f"${{{arg}}}" in DOCKERFILE.read_text(), f"{arg} is declared but not used"


def test_pins_agree_with_the_wheels_metadata(capsys):
    assert check_pins.main([]) == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "FAIL" not in table
    # the requirements that tie the pins together are in the table: the check cannot pass by checking nothing
    for line in ("torch==2.14.1", "flashinfer_python[cu13]==0.7.2", "nvidia-cudnn-cu13==9.24.0.43",
                 'transformer_engine_cu13==2.20.2; extra == "core-cu13"', "torch>=2.1"):
        assert re.search(rf"^\S+ \S+ +{re.escape(line)}.* ok$", table, re.M), line


def test_the_metadata_records_the_pinned_wheels():
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE.read_text(), re.M))
    wheels = json.loads(check_pins.METADATA.read_text())["wheels"]
    for arg, package in PINS.items():
        assert wheels[package]["version"] == args[arg], f"{package}: run python docker/check_pins.py --refresh"
    core = wheels[f"transformer-engine-cu{args['CUDA_MAJOR']}"]  # TE's prebuilt core for the image's CUDA major
    assert core["version"] == args["TRANSFORMER_ENGINE_VERSION"] and core["file"].endswith("x86_64.whl")


@pytest.mark.parametrize(("edits", "message"), [
    ({"cuda:13.0.2-": "cuda:12.9.1-", "ARG CUDA_MAJOR=13": "ARG CUDA_MAJOR=12"},
     "torch 2.14.1 requires 'nvidia-cudnn-cu13==9.24.0.43; platform_system == \"Linux\"' (CUDA 13), "
     "but CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04 is CUDA 12.9"),
    ({"cuda:13.0.2-": "cuda:12.9.1-", "ARG CUDA_MAJOR=13": "ARG CUDA_MAJOR=12"},
     "sglang 0.5.23 requires 'flashinfer_python[cu13]==0.7.2' (CUDA 13)"),
    ({"cuda:13.0.2-": "cuda:12.9.1-"}, "CUDA_MAJOR=13 but CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04"),
    ({"ARG TORCH_VERSION=2.14.1": "ARG TORCH_VERSION=2.13.0"},
     "sglang 0.5.23 requires 'torch==2.14.1', but TORCH_VERSION=2.13.0"),
    ({"ARG FLASHINFER_VERSION=0.7.2": "ARG FLASHINFER_VERSION=0.7.4"},
     "sglang 0.5.23 requires 'flashinfer_python[cu13]==0.7.2', but FLASHINFER_VERSION=0.7.4"),
    ({"ARG TRANSFORMERS_VERSION=5.19.0": "ARG TRANSFORMERS_VERSION=5.18.0"},
     "sglang 0.5.23 requires 'transformers==5.19.0', but TRANSFORMERS_VERSION=5.18.0"),
    ({"core_cu${CUDA_MAJOR}": "core_cu12"},
     "transformer-engine 2.20.2 requires 'transformer_engine_cu12==2.20.2; extra == \"core-cu12\"', not recorded"),
])
def test_a_disagreeing_pin_fails_the_check(tmp_path, capsys, edits, message):
    text = DOCKERFILE.read_text()
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "Dockerfile").write_text(text)
    assert check_pins.main(["--dockerfile", str(tmp_path / "Dockerfile")]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("edit", "message"), [
    (lambda w: w["sglang"].update(version="0.5.22"),
     "records sglang 0.5.22, but the Dockerfile pins SGLANG_VERSION=0.5.23: run `python docker/check_pins.py"),
    (lambda w: w.pop("transformer-engine-cu13"),
     "requires 'transformer_engine_cu13==2.20.2; extra == \"core-cu13\"', not recorded"),
    (lambda w: w["megatron-core"].update(requires_python=">=3.13"), "megatron-core 0.19.0 requires Python >=3.13"),
])
def test_stale_metadata_fails_the_check(tmp_path, capsys, edit, message):
    recorded = json.loads(check_pins.METADATA.read_text())
    edit(recorded["wheels"])
    (tmp_path / "wheels.json").write_text(json.dumps(recorded))
    assert check_pins.main(["--metadata", str(tmp_path / "wheels.json")]) == 1
    assert message in capsys.readouterr().err
