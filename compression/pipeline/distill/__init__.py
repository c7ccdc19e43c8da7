"""Knowledge distillation: a smaller student trained on CPU to match a teacher encoder.

``params`` (no torch) is what the server imports to validate a job; ``recipe.distill``
runs in the converter subprocess.
"""
