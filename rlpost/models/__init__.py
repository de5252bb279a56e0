"""Model definitions and checkpoints: HF directories, GGUF assets, (later) megatron specs and converters."""
