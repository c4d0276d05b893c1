"""Wall time of the README's first command (`python -m csl_jax.main --config configs/quickstart.py`), cold and warm.

Each repeat runs the quickstart in a fresh workdir as a separate process, with a fresh, empty XLA compilation
cache ("cold": what a fresh machine sees) and then once more with that cache filled ("warm": a re-run). Prints
per-repeat wall times, their medians, and each run's stage times (pretraining from the log, evaluators from the
`wall_seconds` they store), and writes them as JSON.

  python benchmarks/quickstart_time.py --repeats 2 --json /tmp/quickstart_time.json

Run it on an otherwise idle machine: on 2 cores any other load shows up one for one.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

STAGES = ("linear_eval", "robustness", "geometry", "corruptions")


def run_quickstart(workdir: pathlib.Path, cache_dir: pathlib.Path, config: str) -> dict:
  """One quickstart process -> {"seconds", "runs": {run: {stage: seconds}}}."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir))
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "csl_jax.main", "--config", config, "--workdir", str(workdir)],
                        env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"quickstart failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  runs = {}
  for name, secs in re.findall(r"\] (\S+): pretraining done in ([0-9.]+)s", proc.stderr):
    runs.setdefault(name, {})["pretraining"] = float(secs)
  for run_dir in sorted(p for p in workdir.iterdir() if p.is_dir()):
    for stage in STAGES:
      path = run_dir / f"{stage}.json"
      if path.exists():
        value = json.loads(path.read_text()).get("wall_seconds")
        if value is not None:
          runs.setdefault(run_dir.name, {})[stage] = round(float(value), 1)
  return {"seconds": round(seconds, 1), "runs": runs}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=2, help="cold runs (each followed by one warm run)")
  parser.add_argument("--config", default="configs/quickstart.py")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  results = {"cold": [], "warm": []}
  with tempfile.TemporaryDirectory() as tmp:
    for repeat in range(args.repeats):
      cache = pathlib.Path(tmp) / f"cache{repeat}"
      for kind in ("cold", "warm"):
        result = run_quickstart(pathlib.Path(tmp) / f"{kind}{repeat}", cache, args.config)
        results[kind].append(result)
        print(f"{kind} #{repeat + 1}: {result['seconds']:.1f} s  " + "  ".join(
            f"{run}: " + ", ".join(f"{stage} {secs:.1f}" for stage, secs in stages.items())
            for run, stages in result["runs"].items()), flush=True)
  summary = {kind: statistics.median(r["seconds"] for r in runs) for kind, runs in results.items()}
  print(f"median: cold {summary['cold']:.1f} s ({summary['cold'] / 60:.2f} min), warm {summary['warm']:.1f} s")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"median_seconds": summary, **results}, indent=1))


if __name__ == "__main__":
  main()
