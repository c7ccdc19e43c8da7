"""Rollouts: variants per device, the wave plan, the engine and its gates."""
