"""Rewards: rule functions keyed by data_source (rlpost.rewards.registry) and custom functions by file path."""
