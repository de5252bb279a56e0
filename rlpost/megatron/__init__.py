"""megatron-core runtime: process groups, the CPU compatibility layer, forward/backward, optimizer, checkpoints."""
