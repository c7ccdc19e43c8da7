"""Devices: enrollment, desired state (and its fast path), wake-ups, fallback settings."""
