"""Hyperparameter studies of the ``spa`` experiment: Ray Tune + Optuna searches recorded in MLflow.

Kept import-light on purpose: ``import study`` loads neither Ray, Optuna, MLflow nor torch. Import the modules
themselves; one job each, imports going down this list only (commands are imported by nothing):

- commands: ``tune`` (``python -m study.tune``: flags, then plan, then run) and ``report`` (``python -m study.report``);
- ``run``: connect to Ray, fit the trials to the nodes, pretrain once, build the tuner, fit it, print the summary;
- ``plan``: the settings and the space every trial gets, and the checks that need the space, before anything starts;
  on ``--resume``, the driver's state missing here restored from its snapshot;
- ``preflight``: cheap checks of what the flags point at (a server answers, weights fit, a path is writable), each
  one line naming the value and what to do;
- ``settings``: ``StudySettings``, every flag checked and normalised once, for a new study and its resume alike;
- ``snapshots``: the Tune callback that snapshots the driver's state inside each of Tune's experiment-state saves,
  over ``driver_state``: consistent (SQLite online backup), atomic snapshots beside the trials (``pyarrow.fs``),
  restored all or nothing;
- ``tracking``: the MLflow callback (the only MLflow writer); ``front``: the front book it keeps (fronts kept
  incrementally, files written off the event loop);
  ``records``: a study read back from MLflow (the points table), for the callback's resume and for ``report``;
- ``searcher`` (Optuna through Tune) over ``sampler_plan`` (samplers sized to the budget), ``schedulers`` (by name:
  fifo, asha, moasha) over ``moasha`` (multi-objective ASHA), ``trainable`` (one experiment per trial; with
  ``preflight``'s weights check, the only code here that imports torch), ``ray_internals`` (every private Ray
  attribute used, in one place);
- ``spaces`` (``SearchSpace``, validated) over ``space_files`` (files, ``extends``); ``pareto`` (fronts computed,
  drawn, printed); ``outcome`` (how a trial ended); ``names`` (names and defaults shared by several modules).
"""
