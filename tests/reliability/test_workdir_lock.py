"""The workdir lock: one run per workdir; stale locks of dead processes are taken over, others are not."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from csl_jax.train import workdir_lock
from csl_jax.train.workdir_lock import WorkdirLock, WorkdirLockedError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Holds the lock of argv[1] until stdin closes (or the process is killed).
_HOLDER = textwrap.dedent("""
    import sys
    from csl_jax.train import workdir_lock
    with workdir_lock.WorkdirLock(sys.argv[1], process_index=0):
      print("locked", flush=True)
      sys.stdin.read()
    """)

# Waits for argv[2] to exist (a start signal), then tries to take the lock of argv[1]; prints won / lost.
_RACER = textwrap.dedent("""
    import os, sys, time
    from csl_jax.train import workdir_lock
    while not os.path.exists(sys.argv[2]):
      time.sleep(0.001)
    try:
      workdir_lock.WorkdirLock(sys.argv[1], process_index=0).acquire()
      print("won", flush=True)
      time.sleep(2.0)  # hold it (without releasing) while the others try.
    except workdir_lock.WorkdirLockedError:
      print("lost", flush=True)
    """)


def _python(code, *args, **kwargs):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True, **kwargs)


@pytest.fixture
def holder(tmp_path):
  """A separate process holding the lock of tmp_path; yields the Popen, kills it (by PID) at the end."""
  proc = _python(_HOLDER, tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  assert proc.stdout.readline().strip() == "locked"
  yield proc
  if proc.poll() is None:
    proc.kill()
  proc.wait(timeout=10)


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, **fields):
  record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2024-01-01T00:00:00+00:00",
            "started_unix": time.time() - 3600, "token": "someone-else", **fields}
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(record))


def test_acquire_writes_owner_record_and_release_removes_it(tmp_path):
  lock = WorkdirLock(tmp_path / "new_dir", process_index=0)
  with lock:
    record = json.loads(lock.path.read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started"]
  assert not lock.path.exists()
  assert not list((tmp_path / "new_dir").iterdir()), "no temporary files are left behind"


def test_second_run_fails_fast_with_holder_in_message(tmp_path, holder):
  t0 = time.time()
  with pytest.raises(WorkdirLockedError) as info:
    WorkdirLock(tmp_path, process_index=0).acquire()
  assert time.time() - t0 < 2.0
  message = str(info.value)
  assert f"PID {holder.pid}" in message and socket.gethostname() in message
  assert "started" in message and f"kill {holder.pid}" in message and "--workdir" in message
  holder.stdin.close()  # the holder exits normally and releases the lock ...
  holder.wait(timeout=10)
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
  with WorkdirLock(tmp_path, process_index=0):  # ... so the next run gets it.
    pass


def test_lock_of_killed_run_is_taken_over_with_warning(tmp_path, holder, caplog):
  holder.send_signal(signal.SIGKILL)  # kill -9: no chance to release
  holder.wait(timeout=10)
  stale = json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())
  assert stale["pid"] == holder.pid
  with caplog.at_level("WARNING"):
    with WorkdirLock(tmp_path, process_index=0) as lock:
      assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  assert any("stale" in r.getMessage() and str(holder.pid) in r.getMessage() for r in caplog.records)


def test_stale_lock_file_with_dead_pid_is_taken_over(tmp_path):
  _write_lock(tmp_path, pid=_dead_pid())
  with WorkdirLock(tmp_path, process_index=0) as lock:
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
  assert not lock.path.exists()


def test_reused_pid_is_recognised_by_its_start_time(tmp_path):
  # The PID is alive (this process) but started at another time: the lock's process is gone.
  _write_lock(tmp_path, pid=os.getpid(), pid_start_ticks=1)
  if workdir_lock._process_start_ticks(os.getpid()) is None:
    pytest.skip("no /proc on this platform")
  with WorkdirLock(tmp_path, process_index=0):
    pass


def test_lock_from_another_host_is_not_taken_over(tmp_path):
  _write_lock(tmp_path, host="tpu-vm-that-is-gone", pid=_dead_pid())
  with pytest.raises(WorkdirLockedError) as info:
    WorkdirLock(tmp_path, process_index=0).acquire()
  message = str(info.value)
  assert "tpu-vm-that-is-gone" in message and f"delete {tmp_path / workdir_lock.LOCK_NAME}" in message
  assert (tmp_path / workdir_lock.LOCK_NAME).exists()


def test_unreadable_lock_is_not_taken_over(tmp_path):
  (tmp_path / workdir_lock.LOCK_NAME).write_text("{not json")
  with pytest.raises(WorkdirLockedError, match="cannot be read"):
    WorkdirLock(tmp_path, process_index=0).acquire()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
  lock = WorkdirLock(tmp_path, process_index=0).acquire()
  _write_lock(tmp_path, pid=12345, host="elsewhere")  # e.g. removed by hand and taken by another run
  lock.release()
  assert json.loads(lock.path.read_text())["host"] == "elsewhere"


def test_non_zero_process_index_is_a_no_op(tmp_path, holder):
  with WorkdirLock(tmp_path, process_index=1) as lock:  # the lock is held by `holder`: no error here
    assert not lock.held
  assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["pid"] == holder.pid


def test_default_process_index_is_jax_process_index(tmp_path):
  with WorkdirLock(tmp_path) as lock:  # single process: index 0 takes the lock
    assert lock.held and lock.path.exists()


def test_racing_processes_exactly_one_wins(tmp_path):
  go = tmp_path / "go"
  racers = [_python(_RACER, tmp_path / "wd", go, stdout=subprocess.PIPE) for _ in range(6)]
  time.sleep(1.0)  # let them start and spin on the signal
  go.touch()
  results = sorted(p.communicate(timeout=30)[0].strip() for p in racers)
  assert results == ["lost"] * 5 + ["won"], results
