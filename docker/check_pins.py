"""Do the GPU image's pins agree with each other, as the wheels' own metadata says?

SGLang pins torch exactly, torch's Linux wheels pull one CUDA major's libraries, and Transformer Engine compiles its
torch extension with the image's nvcc: a disagreement shows only deep into an image build (pip's resolver, TE's
compile) or at run time (flashinfer kernels for another CUDA). So `--refresh` reads, from PyPI, the metadata of each
wheel the Dockerfile pins (and of the sub-packages they pin exactly, e.g. transformer-engine-cu13) and keeps the
requirements that matter in docker/wheel_metadata.json; the default mode checks offline, from that file, that every
pin satisfies every requirement on it and that every CUDA-specific requirement names the CUDA major of the base
image. A pin changed without --refresh fails as stale.

    python docker/check_pins.py              # offline check, prints a table, exits 1 on any disagreement
    python docker/check_pins.py --refresh    # after changing a pin: re-read the metadata from PyPI
"""

from __future__ import annotations

import argparse
import email.parser
import io
import json
import re
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from packaging import tags
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
DOCKERFILE = HERE / "Dockerfile"
METADATA = HERE / "wheel_metadata.json"
INDEX = "https://pypi.org/simple"
# What `pip install` in the image runs on: the base image's Ubuntu 24.04 python3 (3.12) and glibc 2.39, on x86_64.
# Wheels are platform-specific (torch's CUDA libraries are Linux-only), so the metadata is read for this target.
UBUNTU = "ubuntu24.04"
PYTHON = (3, 12)
GLIBC_MINOR = 39
TARGET = f"{UBUNTU}, CPython {PYTHON[0]}.{PYTHON[1]}, glibc 2.{GLIBC_MINOR}, x86_64"
MARKER_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_version": "3.12.3",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "platform_release": "", "platform_version": ""}
# packages whose version is the CUDA release they belong to, unlike e.g. nvidia-cufft (12.x in CUDA 13)
CUDA_VERSIONED = {"cuda-toolkit", "cuda-bindings", "cuda-python", "nvidia-cuda-runtime", "nvidia-cuda-nvcc"}
CUDA_TAG = re.compile(r"(?:^|-)cu(?:da)?(\d+)x?$")  # nvidia-cudnn-cu13, flashinfer extra cu13, cupy-cuda12x


def read_dockerfile(text: str) -> dict:
    """The ARGs, the base image's CUDA version, and each `"name[extras]==${ARG}"` that a pip install pins."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    image = re.search(r":(\d+)\.(\d+)\.\d+-\S*?-(ubuntu[\d.]+)$", args["CUDA_IMAGE"])
    if not image:
        raise SystemExit(f"CUDA_IMAGE={args['CUDA_IMAGE']} is not an nvidia/cuda:<x.y.z>-...-ubuntu<release> tag")
    pins = {}
    for name, extras, arg in re.findall(r'"([\w.-]+)(?:\[([^\]]*)\])?==\$\{(\w+)\}"', text):
        extras = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], extras)
        pins[canonicalize_name(name)] = {"arg": arg, "version": args[arg],
                                         "extras": sorted(canonicalize_name(e) for e in extras.split(",") if e)}
    return {"args": args, "cuda_major": int(image.group(1)), "cuda": f"{image.group(1)}.{image.group(2)}",
            "ubuntu": image.group(3), "pins": pins}


def _cuda_majors(req: Requirement) -> set[int]:
    names = [canonicalize_name(req.name), *(canonicalize_name(e) for e in req.extras)]
    return {int(m.group(1)) for n in names if (m := CUDA_TAG.search(n))}


def _admits_major(specifier: SpecifierSet, major: int) -> bool:
    """Whether a CUDA-versioned requirement (cuda-toolkit==13.0.3, cuda-python>=13.0) allows some release of `major`:
    probing the bounds it names, plus x.0 and a late x.y, is enough for the ranges packages write."""
    bounds = [Version(s.version.removesuffix(".*")) for s in specifier]
    probes = [Version(f"{major}.0"), Version(f"{major}.999"), *(v for v in bounds if v.major == major)]
    return any(specifier.contains(v, prereleases=True) for v in probes)


def _is_sub_package(req: Requirement, name: str) -> bool:
    """A part of a pinned package released with it and pinned exactly by it (transformer-engine's
    transformer_engine_cu13==2.20.2, sglang's sglang-kernel==0.4.10): its metadata is recorded too."""
    spec = str(req.specifier)
    return canonicalize_name(req.name).startswith(name + "-") and spec.startswith("==") and "," not in spec


def _active(req: Requirement, extras: list[str]) -> bool:
    """Whether pip installs this requirement on the target, given the extras asked for."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate(MARKER_ENV | {"extra": e}) for e in [*extras, ""])


# --- refresh: read the metadata from PyPI ---------------------------------------------------------------------------

def _get(url: str, headers: dict | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as response:
        return response.read()


class _HttpFile(io.RawIOBase):
    """A seekable view of a remote file through HTTP range requests: zipfile reads a wheel's METADATA from the
    central directory at its end without downloading the wheel (torch's is over 500 MB)."""

    def __init__(self, url: str, size: int):
        self.url, self.size, self.pos = url, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = (0, self.pos, self.size)[whence] + offset
        return self.pos

    def readinto(self, buffer) -> int:
        end = min(self.pos + len(buffer), self.size)
        if end <= self.pos:
            return 0
        data = _get(self.url, {"Range": f"bytes={self.pos}-{end - 1}"})
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _target_tags() -> list[tags.Tag]:
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(GLIBC_MINOR, 16, -1)]
    platforms += ["manylinux2014_x86_64", "linux_x86_64"]
    return [*tags.cpython_tags(PYTHON, platforms=platforms), *tags.compatible_tags(PYTHON, platforms=platforms)]


def _pick_file(name: str, version: str) -> dict:
    """The file pip would take on the target: the best-ranked compatible wheel, else the sdist."""
    index = json.loads(_get(f"{INDEX}/{name}/", {"Accept": "application/vnd.pypi.simple.v1+json"}))
    rank = {tag: i for i, tag in enumerate(_target_tags())}
    wheels, sdists = [], []
    for f in index["files"]:
        if f["filename"].endswith(".whl"):
            _, wheel_version, _, wheel_tags = parse_wheel_filename(f["filename"])
            best = min((rank[t] for t in wheel_tags if t in rank), default=None)
            if wheel_version == Version(version) and best is not None:
                wheels.append((best, f))
        elif f["filename"].endswith(".tar.gz") and f["filename"].rsplit("-", 1)[-1] == f"{version}.tar.gz":
            sdists.append(f)
    if wheels:
        return min(wheels, key=lambda w: w[0])[1]
    if sdists:
        return sdists[0]
    raise SystemExit(f"PyPI has no file of {name} {version} for {TARGET}")


def _read_metadata(f: dict) -> str:
    if f.get("core-metadata") or f.get("data-dist-info-metadata"):  # PEP 658: the index serves METADATA beside it
        return _get(f["url"] + ".metadata").decode()
    if f["filename"].endswith(".whl"):
        wheel = zipfile.ZipFile(io.BufferedReader(_HttpFile(f["url"], f["size"]), 1 << 16))
        return wheel.read(next(n for n in wheel.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))).decode()
    with tarfile.open(fileobj=io.BytesIO(_get(f["url"]))) as sdist:
        return sdist.extractfile(next(m for m in sdist.getmembers() if re.fullmatch(r"[^/]+/PKG-INFO", m.name))).read(
        ).decode()


def refresh(dockerfile: dict) -> dict:
    """Read each pinned wheel's metadata, and that of the sub-packages it pins exactly, keeping the requirements that
    the check looks at: those on a recorded package and those that name a CUDA major."""
    queue = [(name, pin["version"], pin["extras"]) for name, pin in dockerfile["pins"].items()]
    wheels = {}
    while queue:
        name, version, extras = queue.pop(0)
        f = _pick_file(name, version)
        meta = email.parser.HeaderParser().parsestr(_read_metadata(f))
        requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
        sub = [(canonicalize_name(r.name), str(r.specifier)[2:], sorted(r.extras)) for r in requires
               if _is_sub_package(r, name) and _active(r, extras)]
        queue += [s for s in sub if s[0] not in wheels and s[0] not in {q[0] for q in queue}]
        keep = set(dockerfile["pins"]) | {s[0] for s in sub} | set(wheels)
        # an sdist's PKG-INFO shows the uploader's build: TE's torch extension picks its CUDA core package from the
        # installed torch when it is built, so that line says nothing about this image
        from_sdist = not f["filename"].endswith(".whl")
        wheels[name] = {
            "version": meta["Version"], "file": f["filename"], "requires_python": meta["Requires-Python"] or "",
            "requires": [str(r) for r in requires
                         if (canonicalize_name(r.name) in keep and not (from_sdist and _cuda_majors(r)))
                         or (not from_sdist and (_cuda_majors(r) or canonicalize_name(r.name) in CUDA_VERSIONED))],
            "extras": sorted(canonicalize_name(e) for e in meta.get_all("Provides-Extra") or []),
        }
    return {"_about": "written by docker/check_pins.py --refresh from PyPI; the requirements the check reads",
            "target": TARGET, "wheels": wheels}


# --- check: offline, from the recorded metadata ---------------------------------------------------------------------

def check(dockerfile: dict, recorded: dict) -> tuple[list[tuple[str, str, str, bool]], list[str]]:
    """Rows (wheel, requirement, checked against, ok) for the table, and a message per disagreement."""
    rows, errors = [], []
    major, args, pins, wheels = dockerfile["cuda_major"], dockerfile["args"], dockerfile["pins"], recorded["wheels"]

    def row(wheel: str, what: str, against: str, ok: bool, error: str) -> None:
        rows.append((wheel, what, against, ok))
        if not ok:
            errors.append(error)

    image = f"CUDA_IMAGE={args['CUDA_IMAGE']}"
    row("Dockerfile", f"CUDA_MAJOR={args.get('CUDA_MAJOR')}", image, args.get("CUDA_MAJOR") == str(major),
        f"CUDA_MAJOR={args.get('CUDA_MAJOR')} but {image} is CUDA {dockerfile['cuda']}")
    row("Dockerfile", f"base image on {dockerfile['ubuntu']}", f"metadata read for {recorded['target']}",
        dockerfile["ubuntu"] == UBUNTU and recorded["target"] == TARGET,
        f"{image} on {dockerfile['ubuntu']}, metadata read for {recorded['target']}; this script reads it for "
        f"{TARGET}")
    refresh, python = "run `python docker/check_pins.py --refresh`", MARKER_ENV["python_full_version"]
    for name, pin in pins.items():
        seen = wheels.get(name, {}).get("version")
        row(name, f"recorded {seen}", f"{pin['arg']}={pin['version']}", seen == pin["version"],
            f"{METADATA.name} records {name} {seen}, but the Dockerfile pins {pin['arg']}={pin['version']}: {refresh}")
    versions = {name: w["version"] for name, w in wheels.items()} | {n: p["version"] for n, p in pins.items()}
    against = {name: f"{pins[name]['arg']}={v}" if name in pins else f"recorded {v}" for name, v in versions.items()}
    for name, w in wheels.items():
        wheel = f"{name} {w['version']}"
        rows.append((wheel, w["file"], "the file pip takes here", True))
        extras = pins.get(name, {}).get("extras", [])
        for extra in extras:
            row(wheel, f"provides extra [{extra}]", "the Dockerfile's install", extra in w["extras"],
                f"the Dockerfile installs {name}[{extra}], but {wheel} has no such extra")
        if w["requires_python"]:
            row(wheel, f"Requires-Python {w['requires_python']}", f"the image's Python {python}",
                SpecifierSet(w["requires_python"]).contains(python),
                f"{wheel} requires Python {w['requires_python']}; the image has {python}")
        for line in w["requires"]:
            req = Requirement(line)
            dep = canonicalize_name(req.name)
            if not _active(req, extras):
                continue
            if _is_sub_package(req, name) and dep not in wheels:
                row(wheel, line, "recorded metadata", False, f"{wheel} requires '{line}', not recorded: {refresh}")
            elif dep in versions:
                ok = req.specifier.contains(versions[dep], prereleases=True)
                row(wheel, line, against[dep], ok, f"{wheel} requires '{line}', but {against[dep]}")
                for extra in req.extras:
                    offered = canonicalize_name(extra) in wheels.get(dep, {}).get("extras", [])
                    row(wheel, f"{req.name}[{extra}] exists", f"{dep}'s extras", offered,
                        f"{wheel} requires {req.name}[{extra}], but {dep} {versions[dep]} has no extra {extra}")
            if majors := _cuda_majors(req):
                row(wheel, line, f"CUDA {major} of CUDA_IMAGE", majors == {major},
                    f"{wheel} requires '{line}' (CUDA {'/'.join(map(str, sorted(majors)))}), but {image} is CUDA "
                    f"{dockerfile['cuda']}")
            elif dep in CUDA_VERSIONED:
                row(wheel, line, f"CUDA {major} of CUDA_IMAGE", _admits_major(req.specifier, major),
                    f"{wheel} requires '{line}', which no CUDA {major} release satisfies ({image})")
    return rows, errors


def _table(rows: list[tuple[str, str, str, bool]]) -> str:
    header = ("wheel", "requirement", "checked against", "")
    cells = [header] + [(w, r if len(r) <= 70 else r[:67] + "...", a, "ok" if ok else "FAIL") for w, r, a, ok in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3] for c in cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refresh", action="store_true", help="re-read the wheels' metadata from PyPI first")
    parser.add_argument("--dockerfile", type=Path, default=DOCKERFILE)
    parser.add_argument("--metadata", type=Path, default=METADATA)
    options = parser.parse_args(argv)
    dockerfile = read_dockerfile(options.dockerfile.read_text())
    if options.refresh:
        options.metadata.write_text(json.dumps(refresh(dockerfile), indent=1) + "\n")
    rows, errors = check(dockerfile, json.loads(options.metadata.read_text()))
    print(_table(rows))
    for error in errors:
        print(f"pin disagreement: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
