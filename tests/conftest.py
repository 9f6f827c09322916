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

import signal  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _default_sigchld():
    """Each test starts with the default SIGCHLD disposition. A DataLoader with worker processes
    installs PyTorch's SIGCHLD handler for the rest of the process; with it in place, once
    OpenVINO had run, the next ``subprocess.run`` crashed the whole session (SIGSEGV in
    ``time.monotonic``, seen with gdb; ``tests/test_data_loader.py``, ``test_openvino.py`` and
    ``test_packed_cli.py`` in one session reproduce it). r2b's commands never combine the three
    in one process."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield
