"""Names of what an experiment reports after every pruning step (one place for the CLI, the study and tests)."""

# The table and CSV columns of ``python -m spa.run``, and what every study trial reports ...
METRIC_NAMES = (
    "step",
    "density",
    "val_accuracy",
    "test_accuracy",
    "learned_params",
    "params",
    "flops",
    "epoch",
    "train_loss",
)
# ... and two more: the schedule's target density and the val accuracy right after removal, before recovery.
EXTRA_METRIC_NAMES = ("target_density", "val_accuracy_pruned")
# ... and how long the step spent compiling (``--compile``; 0 without): a cost, never an objective.
TIMING_METRIC_NAMES = ("compile_s",)
