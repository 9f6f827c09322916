"""A run folder is used by one ``r2b train`` at a time: the lock file ``RUN/train.lock``.

The lock file holds JSON ``{"pid", "host", "started"}`` of the process that trains in the folder.
It is created with ``O_CREAT | O_EXCL`` (so of two processes starting together one wins) and
removed when that process ends, however it ends short of being killed. A lock left behind by a
killed process is *stale*: its pid no longer runs on this host (or is a zombie), and the next
``r2b train --resume`` takes it over. A lock from another host cannot be checked; it is honoured,
and the error says to delete it if that run is gone.

Under torchrun only rank 0 takes the lock (it is the only writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from r2b.errors import UserError
from r2b.train.run_folder import RunFolder


def _holder(path: Path) -> dict | None:
    """The lock's record; None without a lock file; ``{}`` for an unreadable or garbled one."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:  # a zombie (ended, not yet reaped) holds nothing
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def holder_alive(record: dict) -> bool:
    """Whether the process named by a lock record may still be running."""
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if record.get("host") != socket.gethostname():
        return True  # cannot tell: honour it
    return _pid_running(pid)


def _in_use(run_dir: Path, record: dict) -> UserError:
    where = f"process {record.get('pid')} on {record.get('host')}"
    since = f" since {record['started']}" if record.get("started") else ""
    lock = RunFolder(run_dir).lock
    return UserError(
        f"run folder {run_dir} is in use by {where}{since} (lock file {lock}); "
        "wait for that run to end or stop it (SIGTERM saves its state), or delete the lock "
        "file if no such run exists"
    )


def check_unlocked(run_dir: Path) -> None:
    """Raise ``UserError`` when a live process holds ``run_dir``'s lock (a stale lock is fine)."""
    record = _holder(RunFolder(run_dir).lock)
    if record is not None and holder_alive(record):
        raise _in_use(run_dir, record)


class RunLock:
    """The lock of one run folder, held by this process from ``acquire`` to ``release``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = RunFolder(run_dir).lock
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def acquire(self) -> RunLock:
        """Create the lock file, taking over a stale one; ``UserError`` if a live run holds it."""
        data = (json.dumps(self.record) + "\n").encode()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                record = _holder(self.path)
                if record is not None and holder_alive(record):
                    raise _in_use(self.path.parent, record) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale: its process is gone
                continue
            except OSError as err:
                raise UserError(
                    f"cannot create the lock file {self.path} ({err.strerror}); choose a "
                    "writable --out"
                ) from None
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            return self
        raise _in_use(self.path.parent, _holder(self.path) or {})

    def release(self) -> None:
        """Remove the lock file if it is still this process's."""
        record = _holder(self.path)
        if (
            record
            and record.get("pid") == self.record["pid"]
            and (record.get("host") == self.record["host"])
        ):
            with contextlib.suppress(OSError):
                self.path.unlink()
