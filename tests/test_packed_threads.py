"""The packed engine's thread policy: the ladder on a scripted clock, and results that do not
depend on the kernels' thread count."""

import torch
from networks import randomise

from r2b.models import create_model
from r2b.packed import to_packed
from r2b.packed.parallel import kernel_threads
from r2b.packed.threads import RETRY_FIRST, ThreadPolicy


class ScriptedMachine:
    """A clock whose passes take ``ms[threads]`` (what the machine is like right now)."""

    def __init__(self, ms: dict[int, float]):
        self.ms, self.now, self.used = dict(ms), 0.0, []

    def clock(self) -> float:
        return self.now

    def run(self, policy: ThreadPolicy, passes: int, top: int = 4) -> list[int]:
        used = []
        for _ in range(passes):

            def call():
                threads = kernel_threads()
                used.append(threads)
                self.now += self.ms[threads] / 1000

            policy.run(("x",), top, call)
        return used


def test_idle_machine_keeps_every_thread():
    machine = ScriptedMachine({4: 1.0, 2: 1.8, 1: 3.5})
    policy = ThreadPolicy(machine.clock)
    assert machine.run(policy, 50) == [4] * 50
    assert kernel_threads() == torch.get_num_threads()  # the override ends with the pass


def test_one_slow_pass_is_noise():
    machine = ScriptedMachine({4: 1.0, 2: 1.8, 1: 3.5})
    policy = ThreadPolicy(machine.clock)
    machine.run(policy, 5)
    machine.ms[4] = 3.0
    machine.run(policy, 1)
    machine.ms[4] = 1.0
    assert machine.run(policy, 10) == [4] * 10


def test_busy_cores_step_down_and_retry_ever_more_rarely():
    machine = ScriptedMachine({4: 1.0, 2: 1.8, 1: 3.5})
    policy = ThreadPolicy(machine.clock)
    machine.run(policy, 5)
    machine.ms = {4: 40.0, 2: 2.5, 1: 3.6}  # one busy process: the full team stalls
    used = machine.run(policy, 200)
    assert used[:3] == [4, 4, 2]  # two slow passes, then one rung down
    assert used.count(4) <= 2 + 6  # retries back off: 8, 16, 32, 64, 128 passes apart
    gaps = [i for i, t in enumerate(used) if t == 4 and i > 2]
    assert gaps and gaps[0] >= 2 + RETRY_FIRST
    assert [b - a for a, b in zip(gaps, gaps[1:])] == sorted(b - a for a, b in zip(gaps, gaps[1:]))


def test_idle_again_gets_the_threads_back():
    machine = ScriptedMachine({4: 1.0, 2: 1.8, 1: 3.5})
    policy = ThreadPolicy(machine.clock)
    machine.run(policy, 5)
    machine.ms = {4: 40.0, 2: 2.5, 1: 3.6}
    machine.run(policy, 30)
    machine.ms = {4: 1.0, 2: 1.8, 1: 3.5}
    used = machine.run(policy, 200)
    assert used[-50:] == [4] * 50


def test_results_do_not_depend_on_the_kernel_threads():
    model = randomise(create_model("r2b_resnet18", stage="bnn", stem="cifar", num_classes=10))
    packed = to_packed(model)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    from r2b.packed.parallel import set_kernel_threads

    outs = []
    for threads in (1, 2, 3):
        set_kernel_threads(threads)
        try:
            packed.thread_policy = None
            outs.append(packed(x))
        finally:
            set_kernel_threads(None)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    with torch.inference_mode():
        assert torch.equal(outs[0], model(x))
