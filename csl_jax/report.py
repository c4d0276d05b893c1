"""Comparison report CLI across runs (paper Tables 1/4, Figs. 2/3).

  python -m csl_jax.report <workdir> [<workdir> ...] [--baseline DIR] [--reference DIR] [--out DIR]

Finds every run (a directory with run.json) under the workdirs and writes report.md and a self-contained
report.html (figures embedded) to --out. The logic lives in csl_jax/analysis/report.py.
"""
import argparse
import pathlib
import sys

from csl_jax.analysis import report


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m csl_jax.report", description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", type=pathlib.Path, help="directories searched recursively for runs")
  parser.add_argument("--baseline", help="run directory or run name of the self-supervised baseline "
                      "(default: the run whose method is 'simclr')")
  parser.add_argument("--reference", help="run directory or run name of the supervised reference "
                      "(default: the run whose method is 'supcon')")
  parser.add_argument("--out", type=pathlib.Path, help="output directory (default: <first workdir>/report)")
  parser.add_argument("--title", default="csl_jax comparison report")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  out = args.out or args.workdirs[0] / "report"
  try:
    written = report.write_report(args.workdirs, out, baseline=args.baseline, reference=args.reference,
                                  title=args.title)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(f"{len(written['runs'])} runs -> {written['markdown']} and {written['html']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
