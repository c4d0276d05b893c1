"""One process of the multi-host test: `python multihost_worker.py <pid> <nproc> <port> <devices> <workdir>`.

Runs a few pretraining steps on digits with jax.distributed over localhost (gloo CPU collectives)
and writes the final parameters of process 0 to <workdir>/params_<nproc>.npz.
"""
import os
import sys

pid, nproc, port, local_devices, workdir = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]),
                                            sys.argv[5])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if nproc > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=nproc, process_id=pid)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from csl_jax import data  # noqa: E402
from tests.train.test_loop import pretrain, tiny_config  # noqa: E402

# SGD, not Adam: Adam's normalisation would amplify reduction-order noise between the two layouts.
config = tiny_config(**{"pretrain.batch_size": 32, "pretrain.num_steps": 4, "pretrain.checkpoint_every": 2,
                        "optim.name": "sgd", "optim.lr": 0.05})

variables = pretrain(config, "afnc", os.path.join(workdir, f"run_{nproc}"), data.load("digits", "train"))
flat = {jax.tree_util.keystr(k): np.asarray(jax.device_get(v)) for k, v in
        jax.tree_util.tree_leaves_with_path(variables)}
if pid == 0:
  np.savez(os.path.join(workdir, f"params_{nproc}.npz"), **flat)
