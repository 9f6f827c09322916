"""Test-session settings: the suite's models are tiny, so one CPU thread is faster and steadier.

OpenMP's busy-waiting threads make small ops several times slower on a shared 2-core machine;
``OMP_WAIT_POLICY`` is read when torch loads, so it is set before the first ``import torch``.
Subprocesses (CLI tests) inherit both settings through the environment.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
