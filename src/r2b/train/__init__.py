"""Staged Real-to-Binary training on Lightning Fabric (docs/method.md section 5).

- ``config``: typed dataclasses of a pipeline, read from YAML with ``--set`` overrides.
- ``recipes``: the built-in quick recipe (``r2b train`` with no arguments).
- ``runtime``: devices, precision and processes (Fabric; torchrun for several GPUs/nodes).
- ``schedule``: warm-up + step/cosine learning rate as a function of the step.
- ``loop``: one stage's training loop; ``evaluate``: test top-1/top-5; ``metrics``: top-k,
  flip ratio of binary weights, clipping, metrics.csv/TensorBoard.
- ``checkpoint``: safetensors weights and resumable state, atomic writes, no pickles.
- ``guard``: a non-finite loss stops the stage; SIGTERM/SIGINT stop it after the step, saved.
- ``lock``: ``RUN/train.lock``, one ``r2b train`` per run folder (stale locks taken over).
- ``pipeline``: the stages in order, teachers and initialisation from earlier stages, results.
- ``cli``: ``r2b train`` and ``r2b eval``.
"""
