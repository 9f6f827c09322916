"""How many threads a packed forward pass uses: fast on idle cores, graceful on shared ones.

With every core busy with someone else's work, an OpenMP team is only as fast as its slowest
thread: a thread whose core the scheduler gave to another process reaches each barrier a time
slice late, and the packed engine has ~35 parallel regions per image. Measured on 2 shared cores
(issue 9), a 2-thread pass with spinning workers slowed ~45x next to one busy process, while one
thread would only have lost the second core (~1.8x). No load figure tells this in advance
(``/proc/loadavg`` counts our own spinning workers as running), so the engine measures instead.

``ThreadPolicy`` chooses, per input shape, a rung of the ladder ``T, T/2, ..., 1``
(``T = torch.get_num_threads()``, the user's setting) by timing passes:

- it starts at ``T``; every ``interval`` passes it *probes* a neighbouring rung for one pass
  (the one below first, then alternately above and below) and moves there if that pass beat the
  median of the current rung's last ``WINDOW`` passes; the interval starts at ``PROBE_FIRST`` and
  doubles after every probe that did not win (up to ``PROBE_MAX``), and falls back to
  ``PROBE_FIRST`` after a move, so a settled machine pays for a probe ever more rarely;
- ``SLOWED_PASSES`` of the current rung's last ``WINDOW`` passes slower than ``SLOW`` x its best
  (the machine got busier) probe the rung below at once.

A machine busy from the first pass is found by the first probe; one that becomes idle again by
a later probe upwards. Which threads it sets: r2b's compiled kernels always
(``r2b.packed.parallel.kernel_threads``: their results do not depend on the thread count, each
output being computed by one task from the same operands in the same order; tested), PyTorch's
ops only when ``torch_threads`` is set -- the engine sets it for int8 float layers, whose integer
products are thread-invariant too, and not for the exact engine, whose float stem conv rounds
differently on another thread count (and must equal the eval model).
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
SLOWED_PASSES = 2  # slowed passes among a rung's last WINDOW that trigger a probe downwards
PROBE_FIRST, PROBE_MAX = 2, 1024  # passes between probes of a neighbouring rung


@dataclass
class _ShapeState:
    """What the policy knows about one input shape (at one setting ``top``)."""

    rung: int  # current thread count
    top: int
    times: dict[int, deque] = field(default_factory=dict)
    best: dict[int, float] = field(default_factory=dict)
    interval: int = PROBE_FIRST
    since_probe: int = 0
    probing: int | None = None  # the rung of the pass now running, when it is a probe
    downwards: bool = True  # direction of the next probe

    def neighbour(self) -> int | None:
        """The rung the next probe tries (``None``: no neighbour that way or the other)."""
        below, above = max(1, self.rung // 2), min(self.top, self.rung * 2)
        order = (below, above) if self.downwards else (above, below)
        return next((r for r in order if r != self.rung), None)


class ThreadPolicy:
    """Chooses the thread count of each pass (see the module docstring); ``clock`` is injectable
    for tests."""

    def __init__(
        self, clock: Callable[[], float] = time.perf_counter, torch_threads: bool = False
    ) -> None:
        self._clock = clock
        self._shapes: dict[tuple, _ShapeState] = {}
        #: also set PyTorch's threads (only where results cannot depend on them)
        self.torch_threads = torch_threads

    def run(self, key: tuple, top: int, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``call()`` with the thread count chosen for ``key`` (up to ``top``), timed."""
        state = self._shapes.get((key, top))
        if state is None:
            state = self._shapes[(key, top)] = _ShapeState(rung=top, top=top)
        threads = state.probing or state.rung
        set_kernel_threads(threads)
        if self.torch_threads and threads != top:
            torch.set_num_threads(threads)
        start = self._clock()
        try:
            return call()
        finally:
            set_kernel_threads(None)
            if self.torch_threads and threads != top:
                torch.set_num_threads(top)
            self._record(state, threads, self._clock() - start)

    def threads_for(self, key: tuple, top: int) -> int:
        """The thread count the next pass of ``key`` would use."""
        state = self._shapes.get((key, top))
        return top if state is None else (state.probing or state.rung)

    def _record(self, state: _ShapeState, threads: int, seconds: float) -> None:
        times = state.times.setdefault(threads, deque(maxlen=WINDOW))
        times.append(seconds)
        best = state.best[threads] = min(state.best.get(threads, seconds), seconds)
        if state.probing is not None:
            self._end_probe(state, seconds)
            return
        state.since_probe += 1
        slowed = sum(t > SLOW * best for t in times) >= SLOWED_PASSES
        if slowed and threads > 1:
            state.downwards, state.since_probe = True, state.interval
        if state.since_probe >= state.interval:
            state.probing = state.neighbour()
            state.since_probe = 0

    def _end_probe(self, state: _ShapeState, seconds: float) -> None:
        """Move to the probed rung if its pass beat the current rung's recent median."""
        probed, state.probing = state.probing, None
        if seconds < _median(state.times.get(state.rung, ())):
            state.rung, state.interval = probed, PROBE_FIRST
            state.times[probed] = deque([seconds], maxlen=WINDOW)
        else:
            state.interval = min(PROBE_MAX, 2 * state.interval)
        state.downwards = not state.downwards if state.rung not in (1, state.top) else (
            state.rung == state.top
        )  # fmt: skip


def _median(values) -> float:
    return statistics.median(values) if values else float("inf")
