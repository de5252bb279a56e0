"""Reading tensors by name from an HF checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch


class SafetensorsDir:
    """Lazy access to the tensors of an HF directory (one file or sharded with an index): a rank opens only the
    files holding what it needs and reads tensor by tensor."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            self.files = {k: self.path / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        elif (self.path / "model.safetensors").is_file():
            from safetensors import safe_open

            single = self.path / "model.safetensors"
            with safe_open(single, "pt") as f:
                self.files = {k: single for k in f.keys()}
        else:
            raise FileNotFoundError(f"'{self.path}' has neither model.safetensors nor model.safetensors.index.json")
        self._open: dict[Path, object] = {}

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.files:
            raise KeyError(f"'{self.path}' has no tensor '{name}'")
        file = self.files[name]
        if file not in self._open:
            self._open[file] = safe_open(file, "pt")
        return self._open[file].get_tensor(name)
