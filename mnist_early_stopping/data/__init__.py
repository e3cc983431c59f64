"""MNIST's files: the download, the IDX format, the train/validation/test splits."""
