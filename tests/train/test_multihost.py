"""Multi-host training with several local processes (jax.distributed on localhost, gloo collectives).

Two processes x 2 CPU devices must train to the same parameters as one process x 4 devices: each
host feeds only its slice of the global batch, BatchNorm and the contrastive loss still see the
global batch, and checkpoints are written jointly.
"""
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(nproc, devices, workdir):
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(pid), str(nproc), port, str(devices), str(workdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(nproc)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


@pytest.mark.slow
def test_two_hosts_equal_one_host(tmp_path):
  _run(1, 4, tmp_path)
  _run(2, 2, tmp_path)
  one, two = np.load(tmp_path / "params_1.npz"), np.load(tmp_path / "params_2.npz")
  assert sorted(one) == sorted(two)
  for name in one:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
  assert (tmp_path / "run_2" / "checkpoints" / "4").is_dir()
