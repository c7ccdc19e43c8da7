"""Devices, groups, bundles and rollouts live here (see the fleet issues)."""
