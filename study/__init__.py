"""Hyperparameter studies of the ``spa`` experiment: Ray Tune + Optuna searches recorded in MLflow.

Kept import-light on purpose: ``import study`` loads neither Ray, Optuna, MLflow nor torch. Import the modules
themselves; one job each, imports going down this list only (commands are imported by nothing):

- commands: ``tune`` (``python -m study.tune``: flags, then plan, then run) and ``report`` (``python -m study.report``);
- ``run``: connect to Ray, fit the trials to the nodes, pretrain once, build the tuner, fit it, print the summary;
- ``plan``: the settings and the space every trial gets, and the checks that need the space, before anything starts;
  on ``--resume``, the driver's state missing here restored from its snapshot;
- ``preflight_weights`` (the weights a trial loads fit and can be had) over ``preflight``: cheap checks of what the
  flags point at (a server answers, a path is writable), each one line naming the value and what to do;
- ``settings``: ``StudySettings``, every flag checked and normalised once, for a new study and its resume alike;
- ``snapshots``: the Tune callback that snapshots the driver's state inside each of Tune's experiment-state saves,
  over ``driver_state``: consistent (SQLite online backup), atomic snapshots beside the trials (``pyarrow.fs``),
  restored all or nothing;
- ``tracking``: the MLflow callback (the only MLflow writer), over its helpers ``trial_runs`` (a trial's child run:
  tags, params, a metric per step, found again on a resume), ``mlflow_runs`` (the experiment, the parent run, params
  and tags), ``study_metrics`` (the parent run's study metrics) and ``trial_error`` (a failed trial's line);
  ``front_files`` (the front files, written off the event loop) over ``front``: the front book the callback keeps
  (fronts kept incrementally); ``front_models`` (the front members' logged models, on a thread of their own) over
  ``registry`` (``--register-model``) over ``logged_models`` (a front member as an MLflow logged model);
  ``driver_heap``: the Tune callback that freezes the driver's heap once the study is set up (no garbage-collector
  stalls in the event loop);
  ``records``: a study read back from MLflow (the points table), for the callback's resume and for ``report``;
- ``searcher`` (Optuna through Tune) over ``sampler_plan`` (samplers sized to the budget), ``schedulers`` (by name:
  fifo, asha, moasha) over ``moasha`` (multi-objective ASHA), ``trainable`` (one experiment per trial; with
  ``preflight_weights``, the only code here that imports torch), ``ray_internals`` (every private Ray attribute
  used, in one place);
- ``spaces`` (``SearchSpace``, validated) over ``space_files`` (files, ``extends``) and ``constraints`` (what a
  trial must reach to count); ``pareto`` (fronts computed, drawn, printed); ``front_measures`` (a front's
  hypervolume and its members shown first); ``mlflow_experiment`` (a study's experiment: artifact location, the
  UI's mode, URLs); ``sqlite_files`` (a ``sqlite:///`` URL's file, an online backup, a sound database);
  ``outcome`` (how a trial ended); ``names`` (names and defaults shared by several modules).
"""
