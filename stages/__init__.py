"""The DVC stages: one thin entry module each (`python -m stages.<name>`); the logic is in mnist_early_stopping."""
