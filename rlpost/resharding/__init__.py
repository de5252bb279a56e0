"""Training layout -> inference layout: the HybridFlow plan, conversion to HF names, bucketing, transports."""
