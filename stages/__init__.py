"""Stages of the MNIST early-stopping pipeline; each module with a main() is one DVC stage."""
