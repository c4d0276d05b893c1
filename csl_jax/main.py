"""Entry point: `python -m csl_jax.main --config configs/<x>.py --workdir <dir>`.

Any config field can be overridden: `--config.optim.lr=0.1 --config.pretrain.epochs=10`.
On multi-host TPU/GPU clusters pass `--multihost` (calls `jax.distributed.initialize()`).
"""
import difflib
import importlib.util
import os
import sys

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
  from csl_jax import compilation_cache  # pylint: disable=g-import-not-at-top
  cache = compilation_cache.enable()
  if cache is not None:
    logging.info("Compiled programs are cached in %s (CSL_JAX_COMPILATION_CACHE=0 turns this off).", cache)
  # TensorFlow is imported only by the TFDS sources (`data.tfds_source`), which keep it off the accelerators.
  from csl_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from csl_jax import pipeline  # pylint: disable=g-import-not-at-top
  logging.info("JAX %s, %d processes, devices: %s", jax.__version__, jax.process_count(), jax.devices())
  try:
    config_lib.validate(FLAGS.config, num_devices=jax.device_count())
  except ValueError as error:  # A bad value: say which and how to fix it, without a traceback.
    sys.exit(f"error: {error}")
  pipeline.run(FLAGS.config, FLAGS.workdir)


def unknown_override(argv) -> str:
  """A clear message for the first `--config.a.b=value` that names no config field ("" when all are known).

  ml_collections reports these as a bare AttributeError traceback; this check loads the config file the same
  way (`get_config(arg)` of `--config path[:arg]`) and names the valid fields at the level that failed.
  """
  values = {}
  for i, token in enumerate(argv):
    if token.startswith("--config="):
      values["config"] = token.split("=", 1)[1]
    elif token == "--config" and i + 1 < len(argv):
      values["config"] = argv[i + 1]
  if "config" not in values:
    return ""
  path, _, arg = values["config"].partition(":")
  if not os.path.exists(path):
    return f"--config {path}: no such file."
  spec = importlib.util.spec_from_file_location("_csl_jax_config_file", path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.getcwd())
  try:
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
  except ValueError as error:  # e.g. an unknown variant after ':'
    return f"--config {values['config']}: {error}"
  finally:
    sys.path.pop(0)
  for token in argv:
    if not token.startswith("--config.") or "=" not in token:
      continue
    node, walked = config, "config"
    for part in token[len("--config."):].split("=", 1)[0].split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f" Did you mean {walked}.{close[0]}?" if close else ""
        return (f"{token.split('=', 1)[0]}: {walked} has no field {part!r}.{hint} "
                f"Valid fields of {walked}: {', '.join(sorted(keys)) or '(none: it is a value)'}.")
      node, walked = node[part], f"{walked}.{part}"
  return ""


if __name__ == "__main__":
  problem = unknown_override(sys.argv[1:])
  if problem:
    sys.exit(f"error: {problem}")
  app.run(main)
