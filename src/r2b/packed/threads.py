"""How many threads a packed forward pass uses: fast on idle cores, graceful on shared ones.

With every core busy with someone else's work, an OpenMP team is only as fast as its slowest
thread: a thread whose core the scheduler gave to another process reaches each barrier a time
slice late, and the packed engine has ~35 parallel regions per image. Measured on 2 shared cores
(issue 9), a 2-thread pass with spinning workers slowed ~45x next to one busy process, while one
thread would only have lost the second core (~1.8x). No load figure tells this in advance
(``/proc/loadavg`` counts our own spinning workers as running), so the engine measures instead.

``ThreadPolicy`` sets the thread count of r2b's compiled kernels (``r2b.packed.parallel.
kernel_threads``; PyTorch's own ops -- the float stem conv, gates, shortcuts -- keep PyTorch's
setting, because their results can depend on it and the exact engine must equal the eval model).
It keeps, per input shape, the wall time of recent passes at each kernel thread count it tried,
on a ladder ``T, T/2, ..., 1`` (``T = torch.get_num_threads()``, the user's setting):

- it runs at the current rung while its passes stay within ``SLOW`` x that rung's best time;
  ``SLOWED_PASSES`` slower passes among its last ``WINDOW`` move it one rung down (fewer
  threads; one slow pass alone is noise: an interrupt, a page fault);
- a rung below ``T`` retries the rung above after ``interval`` passes and keeps it if that pass
  beat the median of its own recent passes; a retry that is not faster doubles the interval
  (``RETRY_FIRST`` .. ``RETRY_MAX``), so a machine that stays busy pays for a slow retry ever
  more rarely, and one that becomes idle again gets its threads back.

What it does not do (measured, ``benchmarks/results/engines_xeon_2c_threads.md``): it reacts to
a machine that gets busier during a run, not to one busy from the first pass (its best time is
then a busy one), and it leaves spinning OpenMP workers spinning: a variant that probed fewer
threads from the start and also lowered PyTorch's threads made int8 engines slow down more next
to a busy process (3.28x vs 2.55x at batch 1), so it was dropped. With ``OMP_WAIT_POLICY=passive``
idle workers sleep and the engine degrades least, at ~1.7x the idle-core time at batch 1.

On an idle machine every pass runs at ``T`` (its times stay within ``SLOW`` of the best). The
kernels' results do not depend on their thread count (each output is computed by one task from
the same operands in the same order, whichever thread runs it; tested), so the policy changes
speed only.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from r2b.packed.parallel import set_kernel_threads

SLOW = 1.5  # a pass this many times its rung's best is "slowed"
WINDOW = 3  # recent passes kept per rung
SLOWED_PASSES = 2  # slow passes among a rung's last WINDOW that move it down (one is noise)
RETRY_FIRST, RETRY_MAX = 8, 1024  # passes before the rung above is tried again


@dataclass
class _ShapeState:
    """What the policy knows about one input shape."""

    rung: int  # current thread count
    times: dict[int, deque] = field(default_factory=dict)
    best: dict[int, float] = field(default_factory=dict)
    interval: int = RETRY_FIRST
    since_retry: int = 0
    retrying_from: int | None = None  # the rung a retry came from


class ThreadPolicy:
    """Chooses the thread count of each pass (see the module docstring); ``clock`` is injectable
    for tests."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._shapes: dict[tuple, _ShapeState] = {}

    def run(self, key: tuple, top: int, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``call()`` with the thread count chosen for ``key`` (up to ``top``), timed."""
        state = self._shapes.get((key, top))
        if state is None:
            state = self._shapes[(key, top)] = _ShapeState(rung=top)
        threads = state.rung
        set_kernel_threads(threads)
        start = self._clock()
        try:
            return call()
        finally:
            set_kernel_threads(None)
            self._record(state, top, threads, self._clock() - start)

    def threads_for(self, key: tuple, top: int) -> int:
        """The thread count the next pass of ``key`` would use."""
        state = self._shapes.get((key, top))
        return top if state is None else state.rung

    def _record(self, state: _ShapeState, top: int, threads: int, seconds: float) -> None:
        times = state.times.setdefault(threads, deque(maxlen=WINDOW))
        times.append(seconds)
        best = state.best[threads] = min(state.best.get(threads, seconds), seconds)
        if state.retrying_from is not None:
            self._end_retry(state, threads)
        elif threads > 1 and sum(t > SLOW * best for t in times) >= SLOWED_PASSES:
            state.rung, state.since_retry = max(1, threads // 2), 0
        elif threads < top:
            self._maybe_retry(state, threads, top)

    def _end_retry(self, state: _ShapeState, threads: int) -> None:
        """After a retry of ``threads``: keep it if it beat the rung below, else back off."""
        below = state.retrying_from
        state.retrying_from = None
        if state.times[threads][-1] < _median(state.times[below]):
            state.rung, state.interval = threads, RETRY_FIRST
            state.times[threads].clear()
            state.times[threads].append(state.best[threads])  # a fresh start at this rung
        else:
            state.rung, state.interval = below, min(RETRY_MAX, 2 * state.interval)
        state.since_retry = 0

    def _maybe_retry(self, state: _ShapeState, threads: int, top: int) -> None:
        state.since_retry += 1
        if state.since_retry >= state.interval:
            state.retrying_from, state.rung = threads, min(top, 2 * threads)


def _median(values) -> float:
    return statistics.median(values) if values else float("inf")
