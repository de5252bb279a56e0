"""Ray actor classes per role: training roles (actor, reference, critic) and rollout engines."""
