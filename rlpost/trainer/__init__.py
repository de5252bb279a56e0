"""The PPO/GRPO driver, validation, checkpoints and metric tracking."""
