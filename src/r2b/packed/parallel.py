"""Run compiled kernels on PyTorch's own OpenMP threads.

The packed engine interleaves PyTorch ops (stem conv, gates, shortcuts) with compiled binary
kernels. Had the kernels their own thread pool (numba's ``prange`` starts a second OpenMP runtime
or a work queue), two pools would share the cores: OpenMP workers spin for a while after each
parallel region, so one pool's spinning threads steal the cores the other needs, and each numba
launch costs tens of microseconds. Instead a kernel here is a C callback (``numba.cfunc``) handed
to ``GOMP_parallel`` of the OpenMP runtime PyTorch already uses -- the same threads, the same
``torch.set_num_threads``, about a microsecond per launch. Inside, threads take tasks from an
atomic counter (dynamic scheduling: a descheduled thread does not hold the others up).

Without an OpenMP runtime in PyTorch (other builds), kernels run on the calling thread.

The compiled side (the ``GOMP_parallel`` call, the task counter, argument packing) is in
``r2b.packed.kernels``, next to the kernels: numba's disk cache tracks only the file that defines
a function, so everything compiled into the kernels lives in that one file.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def openmp_entry_points() -> tuple[int, int]:
    """Addresses of ``GOMP_parallel`` and ``omp_get_thread_num`` in PyTorch's OpenMP runtime,
    or ``(0, 0)`` when PyTorch does not run on OpenMP."""
    if "OpenMP" not in torch.__config__.parallel_info().split("backend:")[-1]:
        return 0, 0
    for path in _openmp_candidates():
        try:
            lib = ctypes.CDLL(path)
            par = ctypes.cast(lib.GOMP_parallel, ctypes.c_void_p).value
            tid = ctypes.cast(lib.omp_get_thread_num, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
        return int(par), int(tid)
    return 0, 0


def _openmp_candidates() -> list[str]:
    """OpenMP libraries loaded in this process, PyTorch's own first."""
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    loaded = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                name = os.path.basename(path)
                if any(k in name for k in ("libgomp", "libiomp5", "libomp")) and path not in loaded:
                    loaded.append(path)
    except OSError:
        pass
    loaded.sort(key=lambda p: not p.startswith(torch_lib))
    return loaded


#: Estimated single-thread kernel time (ns) from which a kernel is worth a second thread: with
#: OMP_WAIT_POLICY=passive idle threads sleep and take tens of microseconds to wake.
MIN_PARALLEL_NS = {"passive": 60_000, "default": 15_000}


def launch_info(worker_address: int, threads: int | None = None) -> tuple[int, int, int, int, int]:
    """``(GOMP_parallel, omp_get_thread_num, worker, threads, min_parallel_ns)`` for the
    kernels' launcher; ``threads`` defaults to ``kernel_threads()``."""
    par, tid = openmp_entry_points()
    threads = kernel_threads() if threads is None else threads
    return par, tid, worker_address, max(1, threads), _min_parallel_ns()


_KERNEL_THREADS: int | None = None


def kernel_threads() -> int:
    """Threads of r2b's compiled kernels: PyTorch's setting, unless a ``ThreadPolicy``
    (``r2b.packed.threads``) lowered it for the current pass. The kernels' results do not depend
    on it; PyTorch's own ops always run at PyTorch's setting (their results can depend on it)."""
    return _KERNEL_THREADS if _KERNEL_THREADS is not None else torch.get_num_threads()


def set_kernel_threads(threads: int | None) -> None:
    """Override ``kernel_threads()`` (``None``: back to PyTorch's setting)."""
    global _KERNEL_THREADS
    _KERNEL_THREADS = threads


@lru_cache(maxsize=1)
def _min_parallel_ns() -> int:
    # the OpenMP runtime read OMP_WAIT_POLICY when it loaded; later changes have no effect
    passive = os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive"
    return MIN_PARALLEL_NS["passive" if passive else "default"]
