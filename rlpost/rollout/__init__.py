"""Rollout: SGLang-protocol servers and client, chat templates, tool-call parsing, the agent loop."""
