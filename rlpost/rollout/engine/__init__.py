"""rlpost's own generation engine (the CPU default), served over SGLang's HTTP protocol."""
