"""The watchdog of a local Ray cluster: stops it and removes its folder when bench ends, however.

Run as a script (``python raywatch.py OWNER_PID CLUSTER_DIR``), never imported by bench: it must
start in a fraction of a second and import nothing but psutil (a dependency of Ray). It reads its
standard input, a pipe held open by the bench process that started the cluster; the pipe closes
when bench closes it or when bench ends in any way, SIGKILL included, because the kernel closes a
dead process's files.

While bench lives, it notes every process of the cluster: the direct children of bench whose
command line names the cluster's folder (Ray's GCS server, raylet and agents are started with
it), and all their descendants (the workers, which rename themselves ``ray::...``). When the pipe
closes it terminates those still alive, kills any left after a grace period, and removes the
folder. Ray's own fate-sharing (a parent-death signal on the processes bench starts) does not
reach the workers a raylet starts, nor the session folder; this does.

The watchdog runs in a session of its own, so Ctrl-C at the terminal reaches bench (which stops
the cluster itself) but not the watchdog, which then only finds the folder left to remove.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys

import psutil

POLL_S = 0.25  # how often the cluster's processes are listed while bench lives
GRACE_S = 3.0  # how long the cluster's processes get to exit on SIGTERM before SIGKILL


def _cluster_processes(owner: psutil.Process, folder: str) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    try:
        children = owner.children()
    except psutil.Error:
        return found
    for child in children:
        try:
            if child.pid == os.getpid() or not any(folder in arg for arg in child.cmdline()):
                continue
            found.append(child)
            found.extend(child.children(recursive=True))
        except psutil.Error:
            continue
    return found


def _note(known: dict[int, psutil.Process], processes: list[psutil.Process]) -> None:
    for process in processes:
        known.setdefault(process.pid, process)  # a psutil.Process remembers its start time: no pid reuse


def _stop(known: dict[int, psutil.Process]) -> None:
    alive: dict[int, psutil.Process] = {}
    for process in list(known.values()):
        try:
            if process.is_running():  # same pid and same start time
                alive[process.pid] = process
                for child in process.children(recursive=True):
                    alive.setdefault(child.pid, child)
        except psutil.Error:
            continue
    if not alive:
        return
    for process in alive.values():
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, left = psutil.wait_procs(list(alive.values()), timeout=GRACE_S)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=GRACE_S)


def main(argv: list[str]) -> int:
    owner_pid, folder = int(argv[1]), argv[2]
    known: dict[int, psutil.Process] = {}
    try:
        owner = psutil.Process(owner_pid)
    except psutil.Error:
        owner = None
    pipe = sys.stdin.fileno()
    while True:
        if owner is not None:
            _note(known, _cluster_processes(owner, folder))
        ready, _, _ = select.select([pipe], [], [], POLL_S)
        if ready and not os.read(pipe, 4096):
            break  # bench closed the pipe, or ended
    _stop(known)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
