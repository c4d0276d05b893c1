"""Test-wide setup: 8 simulated CPU devices, so sharded code is exercised everywhere."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Identical programs (e.g. the uninterrupted and the resumed run of a resume test) compile once.
jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "csl_jax_test_jit_cache", os.environ.get("PYTEST_XDIST_WORKER", "main")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
CIFAR10_ZIP = SHARED / "data" / "cifar10_jpg.zip"


@pytest.fixture(scope="session")
def cifar10_zip():
  """Path of the shared CIFAR-10 JPEG zip; skips the test when it is not beside the repo."""
  if not CIFAR10_ZIP.exists():
    pytest.skip(f"{CIFAR10_ZIP} not present (CI and dev machines have ../shared beside the repo)")
  return CIFAR10_ZIP
