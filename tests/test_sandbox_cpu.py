"""A sandbox's CPU quota: processes that spin on every core get no more than their share.

The grader puts each sandbox in a control group of its own (``grading.sandbox.CpuGroup``)
when the machine lets it; the child joins the group between fork and exec, so everything
it starts is held to ``Limits.cpus``. Skipped, with the reason, where no control group with
a CPU controller can be created (``isolation()["cpu"]`` says the same to the instructor).
"""
from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest

from grading import sandbox

# Two processes that each spin for WALL seconds of wall-clock time: 2 CPUs' worth of work
# if nothing stops them.
SPINNERS = """
import os, sys, time
wall = float(sys.argv[1])
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + wall
        x = 0
        while time.monotonic() < end:
            x += 1
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
"""
WALL = 3.0


def spin(group: sandbox.CpuGroup | None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of the spinners, started the way run_attempt starts a child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", SPINNERS, str(WALL)],
                            preexec_fn=sandbox._preexec(sandbox.Limits(), False, False, group))
    assert proc.wait(timeout=60) == 0
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def test_the_quota_holds_a_sandbox_to_its_share_of_the_cpus():
    group = sandbox.CpuGroup(0.5)
    if group.path is None:
        pytest.skip(f"CPU {sandbox.cpu_isolation()}")
    try:
        cpu, wall = spin(group)
        throttled = group.throttled()
    finally:
        group.close()
    # Half a CPU for about WALL seconds, whatever else the machine is doing (more load can
    # only lower it); without the quota two spinners take up to 2 CPUs.
    assert cpu <= 0.5 * wall * 1.25 + 0.3, f"{cpu:.2f} CPU seconds in {wall:.2f} s: the quota did not hold"
    assert throttled > 0, "the group never throttled its processes"
    assert not group.path  # removed once its processes were gone


def test_the_isolation_report_says_how_cpu_is_shared():
    iso = sandbox.isolation(refresh=True)
    assert iso["cpu"].startswith(("a control group per sandbox", "not isolated:"))
    if iso["cpu"].startswith("not isolated"):
        assert any(n.startswith("CPU not isolated") for n in iso["notes"])
