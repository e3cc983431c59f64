"""The network, its training step, the early-stopping loop, checkpoints and distribution."""
