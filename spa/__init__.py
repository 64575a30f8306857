"""Structured-pruning adapters: the model side (plain PyTorch, no Ray or MLflow)."""

__version__ = "0.1.0"
