"""Evaluation ranks first, then scores: metrics of ranks, and the protocols that produce the
ranks (sampled candidates, full ranking)."""
