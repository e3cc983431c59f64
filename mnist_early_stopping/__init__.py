"""MNIST with early stopping: the library behind the DVC pipeline's stages and the predict command."""
