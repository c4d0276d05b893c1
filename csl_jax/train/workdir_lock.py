"""One run per workdir: a lock file `<workdir>/.csl_jax.lock` holding {host, pid, started, ...} as JSON.

Two runs on one workdir would both write its checkpoints and interleave lines in its metrics files, so the
second one stops at once with WorkdirLockedError saying who holds the lock and how to proceed.

* The lock file is created atomically (the JSON is written to a private file that is hard-linked to the lock
  name, which fails when the name exists), so of two processes racing exactly one wins and nobody ever reads a
  half-written lock. Where hard links are not supported, O_CREAT|O_EXCL is used instead.
* A lock of a process that is gone (same host, the PID is not running, or is running but started later: a reused
  PID) is stale and taken over with a warning. A lock from another host is never taken over automatically:
  that process cannot be checked from here; the message says how to remove it.
* In multi-host runs only process 0 takes the lock; on other processes the lock is a no-op.

    with workdir_lock.WorkdirLock(workdir):
      ...  # train; released on exit (only if the file is still ours)
"""
import datetime
import json
import os
import pathlib
import socket
import sys
import time
import uuid
from typing import Optional

from absl import logging

LOCK_NAME = ".csl_jax.lock"
_TAKEOVER_STALE_S = 30.0  # a takeover marker older than this was left by a crashed process.


class WorkdirLockedError(RuntimeError):
  """The workdir is locked by another (live, or unverifiable) run."""


def _process_start_ticks(pid: int) -> Optional[int]:
  """Start time of `pid` in clock ticks since boot (Linux /proc), or None where unavailable."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name in (...) may contain spaces.
  except (OSError, ValueError, IndexError):
    return None


def pid_alive(pid: int, start_ticks: Optional[int] = None) -> bool:
  """True when `pid` runs on this host (and, when given, started at `start_ticks`: not a reused PID)."""
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # it exists, under another user.
  if start_ticks is not None:
    current = _process_start_ticks(pid)
    if current is not None and current != start_ticks:
      return False
  return True


def _owner_record() -> dict:
  pid = os.getpid()
  now = time.time()
  return {"host": socket.gethostname(), "pid": pid, "pid_start_ticks": _process_start_ticks(pid),
          "started": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
          "started_unix": now, "command": " ".join(sys.argv)[:500], "token": uuid.uuid4().hex}


def read_lock(path) -> Optional[dict]:
  """The lock record at `path`; None when there is no lock file; {} when it is unreadable."""
  try:
    text = pathlib.Path(path).read_text()
  except FileNotFoundError:
    return None
  except OSError:
    return {}
  try:
    record = json.loads(text)
  except ValueError:
    return {}
  return record if isinstance(record, dict) else {}


def _create_exclusive(path: pathlib.Path, text: str) -> bool:
  """Creates `path` holding `text` iff it does not exist (atomic); False when it exists."""
  tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
  tmp.write_text(text)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  except OSError:  # no hard links on this file system.
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    return True
  finally:
    tmp.unlink(missing_ok=True)


def _age(record: dict) -> str:
  started = record.get("started_unix")
  if not isinstance(started, (int, float)):
    return ""
  seconds = max(time.time() - started, 0)
  for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
    if seconds >= size:
      return f", {seconds / size:.1f} {unit} ago"
  return f", {seconds:.0f} s ago"


def _holder(record: dict) -> str:
  text = f"PID {record.get('pid')} on host {record.get('host')!r} (started {record.get('started')}{_age(record)})"
  return text + (f", command: {record['command']}" if record.get("command") else "")


def _locked_message(path: pathlib.Path, record: dict, host: str) -> str:
  workdir = path.parent
  if not record:
    return (f"The workdir {workdir} is locked by {path}, which cannot be read. If no other run uses this "
            f"workdir, delete {path} and re-run; otherwise use a different --workdir.")
  head = (f"The workdir {workdir} is in use by another run: {_holder(record)}. Two runs in one workdir would "
          "overwrite each other's checkpoints and interleave their metrics.")
  if record.get("host") != host:
    return (head + f" That host is not this one ({host!r}), so whether the run is alive cannot be checked here. "
            f"If it is gone (e.g. the VM was preempted or deleted), delete {path} and re-run; otherwise wait for "
            "it to finish or use a different --workdir.")
  if record.get("pid") == os.getpid():
    return head + " It is this process: the workdir lock was taken twice; release the first lock before."
  return (head + f" Wait for it to finish, stop it (kill {record.get('pid')}), or use a different --workdir. "
          f"The lock ({path}) is removed when that run exits, and taken over automatically if it died.")


def _is_stale(record: Optional[dict], host: str) -> bool:
  """True for a readable lock of this host whose process is gone."""
  if not record or record.get("host") != host or not isinstance(record.get("pid"), int):
    return False
  return not pid_alive(record["pid"], record.get("pid_start_ticks"))


def _remove_stale(path: pathlib.Path, record: dict, host: str) -> None:
  """Deletes the stale lock `record` at `path` unless another process replaced it meanwhile.

  A takeover marker (created exclusively) serialises takers, so one cannot delete a fresh lock that another
  taker has just created after deleting the stale one.
  """
  marker = path.with_name(path.name + ".takeover")
  if not _create_exclusive(marker, json.dumps(_owner_record())):
    try:
      if time.time() - marker.stat().st_mtime > _TAKEOVER_STALE_S:
        marker.unlink(missing_ok=True)
    except FileNotFoundError:
      pass
    time.sleep(0.05)
    return
  try:
    current = read_lock(path)
    if current and current.get("token") == record.get("token") and _is_stale(current, host):
      logging.warning("Taking over the stale lock of the workdir %s: %s is no longer running.", path.parent,
                      _holder(current))
      path.unlink(missing_ok=True)
  finally:
    marker.unlink(missing_ok=True)


class WorkdirLock:
  """The lock of one workdir, held from `acquire()` (or `with`) to `release()`; a no-op on process_index != 0."""

  def __init__(self, workdir, *, process_index: Optional[int] = None, name: str = LOCK_NAME):
    if process_index is None:
      import jax  # pylint: disable=g-import-not-at-top
      process_index = jax.process_index()
    self.path = pathlib.Path(workdir) / name
    self.active = process_index == 0
    self.record: Optional[dict] = None

  @property
  def held(self) -> bool:
    return self.record is not None

  def acquire(self, *, attempts: int = 20) -> "WorkdirLock":
    """Takes the lock or raises WorkdirLockedError (fast: no waiting for a live holder)."""
    if not self.active or self.held:
      return self
    self.path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    record = _owner_record()
    for _ in range(attempts):
      if _create_exclusive(self.path, json.dumps(record, indent=1)):
        self.record = record
        return self
      current = read_lock(self.path)
      if current is None:
        continue  # released meanwhile.
      if not current:
        time.sleep(0.05)  # being written by the O_EXCL fallback, or damaged: read it again.
        current = read_lock(self.path)
        if current is None or current:
          continue
        raise WorkdirLockedError(_locked_message(self.path, current, host))
      if not _is_stale(current, host):
        raise WorkdirLockedError(_locked_message(self.path, current, host))
      _remove_stale(self.path, current, host)
    raise WorkdirLockedError(
        f"Could not take the lock {self.path} after {attempts} attempts: other processes keep taking it (is the same "
        f"command starting several times?), or a takeover was interrupted ({self.path.name}.takeover is removed "
        f"automatically after {_TAKEOVER_STALE_S:.0f} s).")

  def release(self) -> None:
    """Deletes the lock file if it is still ours (same token); idempotent."""
    if not self.held:
      return
    current = read_lock(self.path)
    if current and current.get("token") == self.record["token"]:
      self.path.unlink(missing_ok=True)
    elif current is not None:
      logging.warning("The lock %s no longer belongs to this run (now: %s); leaving it.", self.path,
                      _holder(current) if current else "unreadable")
    self.record = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def lock_workdir(workdir, *, process_index: Optional[int] = None) -> WorkdirLock:
  """Acquires and returns the lock of `workdir` (call `.release()`, or use `with WorkdirLock(workdir):`)."""
  return WorkdirLock(workdir, process_index=process_index).acquire()
