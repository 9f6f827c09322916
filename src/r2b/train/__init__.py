"""Staged Real-to-Binary training on Lightning Fabric (docs/method.md section 5).

- ``config``: typed dataclasses of a pipeline, read from YAML with ``--set`` overrides.
- ``recipes``: the built-in quick recipe (``r2b train`` with no arguments).
- ``runtime``: devices, precision and processes (Fabric; torchrun for several GPUs/nodes).
- ``schedule``: warm-up + step/cosine learning rate as a function of the step.
- ``loop``: one stage's training loop, in named steps; ``evaluate``: test top-1/top-5;
  ``metrics``: top-k, flip ratio of binary weights, clipping, metrics.csv/TensorBoard.
- ``progress``: what a stage has done (``StageProgress``) and its result (``StageResult``),
  dataclasses with to/from JSON.
- ``checkpoint``: safetensors weights and resumable state, no pickles (writes via ``r2b.io``).
- ``run_folder``: the run folder's layout and every file name in it, start and resume rules.
- ``guard``: a non-finite loss stops the stage; SIGTERM/SIGINT stop it after the step, saved.
- ``lock``: ``RUN/train.lock``, one ``r2b train`` per run folder (stale locks taken over).
- ``pipeline``: the stage loop: the stages in order, teachers and initialisation from earlier
  stages, results (the data a run sees comes from ``r2b.data.run_splits``).
- ``cli``: ``r2b train`` and ``r2b eval``.
"""
