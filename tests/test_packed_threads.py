"""The packed engine's thread policy: the ladder on a scripted clock, and results that do not
depend on the kernels' thread count."""

import torch
from networks import randomise

from r2b.models import create_model
from r2b.packed import to_packed
from r2b.packed.parallel import kernel_threads
from r2b.packed.threads import ThreadPolicy


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


IDLE = {4: 1.0, 2: 1.8, 1: 3.5}
BUSY = {4: 40.0, 2: 2.5, 1: 3.6}  # one busy process: the full team stalls at every barrier


def test_idle_machine_keeps_every_thread_and_probes_ever_more_rarely():
    machine = ScriptedMachine(IDLE)
    policy = ThreadPolicy(machine.clock)
    used = machine.run(policy, 300)
    probes = [i for i, t in enumerate(used) if t != 4]
    assert all(used[i] == 2 for i in probes)  # the only neighbour of the top rung
    assert probes[0] == 2  # the first probe comes early: a machine busy from the start
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] >= 64 and len(probes) <= 9
    assert kernel_threads() == torch.get_num_threads()  # the override ends with the pass


def test_one_slow_pass_is_noise():
    machine = ScriptedMachine(IDLE)
    policy = ThreadPolicy(machine.clock)
    machine.run(policy, 40)  # probes are 32 passes apart by now
    machine.ms[4] = 3.0
    machine.run(policy, 1)
    machine.ms[4] = 1.0
    assert machine.run(policy, 10) == [4] * 10


def test_busy_from_the_first_pass():
    machine = ScriptedMachine(BUSY)
    used = machine.run(ThreadPolicy(machine.clock), 200)
    assert used[:3] == [4, 4, 2] and used.count(2) >= 190


def test_busy_later_steps_down_at_once():
    machine = ScriptedMachine(IDLE)
    policy = ThreadPolicy(machine.clock)
    machine.run(policy, 50)
    machine.ms = dict(BUSY)
    used = machine.run(policy, 100)
    assert used[:3] == [4, 4, 2] and used[3:].count(2) >= 90


def test_idle_again_gets_the_threads_back():
    machine = ScriptedMachine(IDLE)
    policy = ThreadPolicy(machine.clock)
    machine.run(policy, 5)
    machine.ms = dict(BUSY)
    machine.run(policy, 30)
    machine.ms = dict(IDLE)
    used = machine.run(policy, 200)
    assert used[-100:].count(4) >= 95


def test_torch_threads_follow_only_when_asked():
    seen = []
    policy = ThreadPolicy(ScriptedMachine(BUSY).clock, torch_threads=True)
    top = torch.get_num_threads()
    for _ in range(4):
        policy.run(("x",), top, lambda: seen.append(torch.get_num_threads()))
    assert torch.get_num_threads() == top
    if top > 1:
        assert seen[2] == max(1, top // 2)  # the first probe
        plain = ThreadPolicy(ScriptedMachine(BUSY).clock)
        seen.clear()
        for _ in range(4):
            plain.run(("x",), top, lambda: seen.append(torch.get_num_threads()))
        assert seen == [top] * 4


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
