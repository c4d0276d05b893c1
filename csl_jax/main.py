"""Entry point: `python -m csl_jax.main --config configs/<x>.py --workdir <dir>`.

Any config field can be overridden: `--config.optim.lr=0.1 --config.pretrain.epochs=10`.
On multi-host TPU/GPU clusters pass `--multihost` (calls `jax.distributed.initialize()`).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietCheckpointing:
  """Drops orbax's per-save INFO chatter (dozens of lines per checkpoint); warnings still show."""

  def filter(self, record):
    return record.levelno >= 30 or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietCheckpointing())
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.multihost:
    jax.distributed.initialize()
  # tf.data / TFDS must not grab accelerator memory.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
  except ImportError:
    pass
  from csl_jax import pipeline  # pylint: disable=g-import-not-at-top
  logging.info("JAX %s, %d processes, devices: %s", jax.__version__, jax.process_count(), jax.devices())
  pipeline.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
