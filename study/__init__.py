"""Hyperparameter studies of the ``spa`` experiment: Ray Tune + Optuna searches recorded in MLflow.

Kept import-light on purpose: ``import study`` loads neither Ray, Optuna, MLflow nor torch. Import the modules
themselves (``study.spaces``, ``study.pareto``, ``study.report``, ...).
"""
