"""Structured pruning: attention heads and FFN neurons removed by measured importance,
then a short recovery fine-tune; the results are smaller dense models."""
