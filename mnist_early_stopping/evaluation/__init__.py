"""Scoring the restored network on the test set, and the figures (no TensorFlow in the figures)."""
