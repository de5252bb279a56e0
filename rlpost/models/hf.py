"""Hugging Face model directories: locating them (paths or named assets), reading their dims, loading tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

from rlpost.assets import cache_dir
from rlpost.models.gguf import MODEL_ASSETS, asset_dir, asset_gguf, gguf_dims
from rlpost.models.vl_from_text import VL_ASSETS, vl_asset_dir
from rlpost.models.weights import SUPPORTED_MODEL_TYPES
from rlpost.registry import did_you_mean


def _unknown_model(name: str) -> FileNotFoundError:
    known = [*MODEL_ASSETS, *VL_ASSETS]
    return FileNotFoundError(
        f"model '{name}' is neither a directory nor a known model asset{did_you_mean(name, known)}; "
        f"known assets: {', '.join(known)}"
    )


def hub_cache_dir(repo_id: str) -> Path | None:
    """A Hub id's snapshot in the local Hugging Face cache (HF_HUB_CACHE, or HF_HOME/hub), never downloaded: jobs
    run offline. None for a name that is not of the form 'org/name'; FileNotFoundError naming the cache when the
    model is not in it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or repo_id.startswith((".", "~")) or Path(repo_id).expanduser().exists():
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except HFValidationError:  # not a Hub id: the caller's "neither a directory nor an asset" says it better
        return None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"model '{repo_id}' is not in the local Hugging Face cache '{constants.HF_HUB_CACHE}' (set by HF_HUB_CACHE "
            f"or HF_HOME; nothing is downloaded at run time): download it beforehand with `huggingface-cli download "
            f"{repo_id}` on a machine with access, or give a directory") from None


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A directory as is, a named asset (e.g. 'smollm2-135m-instruct') converted once into the cache, or a Hub id
    (e.g. 'Qwen/Qwen2.5-3B-Instruct') already in the local Hugging Face cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory '{path}' has no config.json")
        return path
    if str(name_or_path) in MODEL_ASSETS:
        return asset_dir(str(name_or_path))
    if str(name_or_path) in VL_ASSETS:
        return vl_asset_dir(str(name_or_path))
    cached = hub_cache_dir(str(name_or_path))
    if cached is not None:
        return cached
    raise _unknown_model(str(name_or_path))


def model_dims(name_or_path: str | Path) -> dict:
    """Head/layer counts for config validation, read cheaply (config.json or GGUF metadata, never weights)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir() and str(name_or_path) in VL_ASSETS:
        cached = cache_dir() / "models" / str(name_or_path)
        if not (cached / "config.json").is_file():  # its language model's dims, without assembling it
            return {**model_dims(VL_ASSETS[str(name_or_path)]["text"]), "model_type": "qwen2_5_vl"}
        path = cached
    elif not path.is_dir() and str(name_or_path) in MODEL_ASSETS:
        cached = cache_dir() / "models" / str(name_or_path)
        if not (cached / "config.json").is_file():
            return gguf_dims(asset_gguf(str(name_or_path)))
        path = cached
    elif not path.is_dir():
        path = hub_cache_dir(str(name_or_path)) or path
    if not (path / "config.json").is_file():
        raise _unknown_model(str(name_or_path))
    config = json.loads((path / "config.json").read_text())
    text = config.get("text_config") or config
    return {
        "model_type": config.get("model_type"),
        "num_attention_heads": text["num_attention_heads"],
        "num_key_value_heads": text.get("num_key_value_heads", text["num_attention_heads"]),
        "num_hidden_layers": text["num_hidden_layers"],
    }


def load_tokenizer(name_or_path: str | Path, chat_template: str | None = None):
    """The model's tokenizer, with `chat_template` in place of its own when given; a chat template is required
    because every prompt goes through it."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise ValueError(f"tokenizer in '{path}' has no chat template (tokenizer_config.json: chat_template)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_hf_model(name_or_path: str | Path, dtype: str = "float32"):
    """A transformers causal LM from a directory or asset; unsupported architectures fail with the list."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model '{path}' has model_type '{config.model_type}'; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
