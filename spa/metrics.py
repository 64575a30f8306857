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
# ... and what the step cost: seconds spent compiling (``--compile``) or capturing (``--cuda-graphs``), 0 without,
# and the trial's peak GPU memory so far in MiB (0 on a CPU; what tells whether trials sharing a GPU at
# ``--gpus-per-trial 0.5`` fit). Never objectives.
COST_METRIC_NAMES = ("compile_s", "peak_gpu_mib")
