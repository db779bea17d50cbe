"""Watchdog for the local Ray cluster a CLI command starts (stdlib only; run as a script).

`python reaper.py MARK PID`, started by the command (PID) in a session of its own, before `ray.init`.
It holds the read end of a pipe whose write end only the command holds, so the read returns EOF
when the command is gone, however it ended (SIGKILL included). Meanwhile it notes the command's
descendants every second (pid and start time); the command also marks its environment with MARK,
which every Ray process it starts inherits. At EOF, every process still alive that it noted or
that carries the mark, and their descendants, get SIGTERM, then SIGKILL after a grace period.

Why: Ray's fate sharing (prctl PDEATHSIG) takes down what the driver started itself (GCS, raylet,
dashboard, log monitor), but not what those started: after a SIGKILL of the driver the raylet's
agents and the dashboard's module processes can outlive it for a minute or more. Both ways of
finding them are needed: a process renamed with a long title (the dashboard's modules) overwrites
its /proc environ, and one reparented to init before the sweep is no one's descendant.

Linux only (/proc); elsewhere the command starts no watchdog.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

MARK_VARIABLE = "SCORING_CLI_RAY_RUN"
POLL_S = 1.0


def supported() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir("/proc")


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[1]), fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def processes() -> dict[int, tuple[int, str, int]]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                found[int(name)] = stat
    return found


def descendants(roots: set[int], table: dict[int, tuple[int, str, int]]) -> dict[int, int]:
    """pid -> start time of the roots' descendants (the roots included when present)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(roots)
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid][2]
            todo += children.get(pid, [])
    return found


def marked_pids(mark: str, variable: str = MARK_VARIABLE) -> set[int]:
    """Live processes whose environment holds variable=mark (zombies have none)."""
    needle, me, found = f"{variable}={mark}".encode(), os.getpid(), set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.add(int(name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def alive(known: dict[int, int]) -> dict[int, int]:
    """The known processes still running as the same process (same start time, not a zombie)."""
    left = {}
    for pid, start in known.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == start and stat[1] != "Z":
            left[pid] = start
    return left


def targets(mark: str, known: dict[int, int]) -> dict[int, int]:
    table = processes()
    roots = set(alive(known)) | marked_pids(mark)
    found = descendants(roots, table)
    found.pop(os.getpid(), None)
    return found


def reap(mark: str, known: dict[int, int], grace_s: float = 3.0) -> int:
    """SIGTERM what is left, SIGKILL what is still there after grace_s; how many were left."""
    left = targets(mark, known)
    for pid in left:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive(left):
        time.sleep(0.1)
    for pid in alive(left) | targets(mark, left):
        _signal(pid, signal.SIGKILL)
    return len(left)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def main() -> int:
    mark, command = sys.argv[1], int(sys.argv[2])
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # outlive a Ctrl-C or hang-up of the command
        signal.signal(sig, signal.SIG_IGN)
    known: dict[int, int] = {}
    while True:
        ready, _, _ = select.select([0], [], [], POLL_S)
        if ready and not os.read(0, 1 << 12):  # EOF: the command is gone, normally or not
            break
        table = processes()
        known = alive(known) | descendants({command}, table)
        known.pop(command, None)
    reap(mark, known)
    return 0


if __name__ == "__main__":
    sys.exit(main())
