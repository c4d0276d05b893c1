"""Gathering a report's inputs: the run directories (any directory with run.json) and their stage outputs.

`discover_runs` finds them, `load_run` reads every stage's JSON into a `Run` (a field is None when its
file is missing or unreadable, with the reason in `problems`), `resolve_baseline_and_reference` picks
Table 4's baseline (SimCLR) and reference (SupCon), `base_pairs` pairs each Adaptive-FNC run with a run of the
method it modifies (the registry's `Method.base`), `seed_groups` gathers the seeds of one experiment.
"""
import copy
import dataclasses
import json
import os
import pathlib
from typing import Optional, Sequence, Union

# Table order of the paper: supervised first, then SimCLR and its false-negative variants.
# Then Table 5's adversarial methods, each base method before its Adaptive FNC version.
METHOD_ORDER = ("ce", "supcon", "simclr", "fnc", "ifnd", "afnc", "rocl", "arocl", "acl", "aacl")
RESULT_FILES = ("linear_eval", "robustness", "geometry", "corruptions")


@dataclasses.dataclass
class Run:
  """One run directory's outputs; a field is None when its file is missing or unreadable."""
  path: pathlib.Path
  name: str
  method: str
  info: dict
  linear_eval: Optional[dict] = None
  robustness: Optional[dict] = None
  geometry: Optional[dict] = None
  corruptions: Optional[dict] = None
  pretrain_metrics: Optional[list] = None
  problems: list = dataclasses.field(default_factory=list)

  @property
  def title(self) -> str:
    return str(self.info.get("title") or self.method)

  @property
  def settings(self) -> str:
    """The method's hyper-parameters from run.json (config.methods.<method>), e.g. "rho_final=0.7, ..."."""
    values = ((self.info.get("config") or {}).get("methods") or {}).get(self.method) or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "—"

  @property
  def status(self) -> str:
    """"finished", or what is missing or stale: unfinished training, results from other weights."""
    total = self.info.get("total_steps")
    last = max((r.get("step", 0) for r in self.pretrain_metrics or []), default=0)
    if total and last < total:
      return f"unfinished (trained {last}/{total} steps)"
    stale = [name for name in RESULT_FILES
             if (getattr(self, name) or {}).get("provenance", {}).get("model", {}).get("checkpoint_step")
             not in (None, total)]
    if stale:
      return "stale: " + ", ".join(f"{name}.json" for name in stale) + f" not from step {total}"
    config = self.info.get("config") or {}
    configured = [n.strip() for n in str(config.get("evaluators", ",".join(RESULT_FILES))).split(",")]
    missing = [name for name in RESULT_FILES if getattr(self, name) is None and name in configured
               and (config.get(name) or {}).get("enabled", True)]
    return "finished" if not missing else "no " + ", ".join(f"{name}.json" for name in missing)


def discover_runs(workdirs: Sequence[Union[str, pathlib.Path]]) -> list:
  """Every directory at or below the workdirs that contains run.json, resolved and de-duplicated."""
  found = []
  for workdir in workdirs:
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
      raise FileNotFoundError(f"{workdir}: not a directory; pass the workdir the pipeline wrote its runs to.")
    found.extend(path.parent.resolve() for path in workdir.rglob("run.json"))
  return sorted(set(found))


def _read_json(path: pathlib.Path, problems: list):
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as error:
    problems.append(f"{path.name} unreadable ({error})")
    return None


def _read_jsonl(path: pathlib.Path, problems: list):
  if not path.exists():
    return None
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except ValueError:
        problems.append(f"{path.name}: line {number} is not JSON (skipped)")
  return records


def load_run(path) -> Run:
  """Reads run.json and every stage output present in one run directory."""
  path = pathlib.Path(path).resolve()
  problems = []
  info = _read_json(path / "run.json", problems) or {}
  name = str(info.get("name") or path.name)
  return Run(path=path, name=name, method=str(info.get("method") or name).lower(), info=info,
             linear_eval=_read_json(path / "linear_eval.json", problems),
             robustness=_read_json(path / "robustness.json", problems),
             geometry=_read_json(path / "geometry.json", problems),
             corruptions=_read_json(path / "corruptions.json", problems),
             pretrain_metrics=_read_jsonl(path / "pretrain_metrics.jsonl", problems), problems=problems)


def sort_key(run: Run):
  """Paper order (METHOD_ORDER), then run name."""
  rank = METHOD_ORDER.index(run.method) if run.method in METHOD_ORDER else len(METHOD_ORDER)
  return rank, run.name, str(run.path)


def _display_name(run: Run) -> str:
  """A run's name in tables: its run name, or for a published checkpoint (run.json "init_from") its title,
  "DINO ViT-B/16" (such runs are all named after their method, "pretrained")."""
  return run.title if run.info.get("init_from") else run.name


def label_runs(runs: Sequence[Run]) -> dict:
  """{run path: display label}: the run name (a checkpoint's title, see `_display_name`), or its path relative to
  the common parent when those clash."""
  names = [_display_name(run) for run in runs]
  parent = pathlib.Path(os.path.commonpath([r.path for r in runs])) if runs else None
  labels = {}
  for run, name in zip(runs, names):
    clash = names.count(name) > 1
    labels[run.path] = str(run.path.relative_to(parent)) if clash and run.path != parent else name
  return labels


def _find_run(spec: str, runs: list, role: str) -> Run:
  path = pathlib.Path(spec)
  if (path / "run.json").exists():
    path = path.resolve()
    for run in runs:
      if run.path == path:
        return run
    run = load_run(path)
    runs.append(run)
    return run
  matches = [run for run in runs if run.name == spec]
  if len(matches) == 1:
    return matches[0]
  raise ValueError(f"--{role} {spec!r}: expected a run directory containing run.json or the name of exactly one "
                   f"discovered run; found {len(matches)} runs named so among {sorted(r.name for r in runs)}.")


def resolve_baseline_and_reference(runs: list, baseline: Optional[str] = None,
                                   reference: Optional[str] = None) -> tuple:
  """(baseline Run | None, reference Run | None, notes). Defaults: the run with method "simclr" / "supcon".

  Explicit specs (a run directory or run name) that match nothing raise ValueError; a missing default
  only adds a note. A directory outside the workdirs is loaded and appended to `runs`.
  """
  notes = []
  chosen = []
  # Table 4's convention: SimCLR is the baseline, SupCon the reference (override with --baseline / --reference).
  for spec, role, default in ((baseline, "baseline", "simclr"), (reference, "reference", "supcon")):
    if spec is not None:
      chosen.append(_find_run(spec, runs, role))
      continue
    candidates = sorted((r for r in runs if default == r.method), key=lambda r: (r.name != default, str(r.path)))
    if len(candidates) > 1:
      notes.append(f"Several {default} runs found; using {candidates[0].path} as the {role} "
                   f"(pass --{role} to choose).")
    chosen.append(candidates[0] if candidates else None)
  return chosen[0], chosen[1], notes


def base_pairs(runs: Sequence[Run]) -> tuple:
  """([(run, base run), ...], notes): every run whose method has a base in the registry (`methods.Method.base`:
  afnc -> simclr, arocl -> rocl, aacl -> acl) with a run of that base method, found by the method recorded in
  run.json (never by run name). Several candidates: the one in the same directory, then the one named like the
  method, then the first path; a note says which was used. No candidate: a note, no pair."""
  from csl_jax import methods  # Lazy: the registry imports JAX, which nothing else in the report needs.
  labels = label_runs(runs)
  pairs, notes, by_method = [], [], {}
  for run in runs:
    by_method.setdefault(run.method, []).append(run)
  for run in runs:
    entry = methods.REGISTRY.get(run.method)
    if entry is None or entry.base is None:
      continue
    candidates = sorted(by_method.get(entry.base, []),
                        key=lambda r: (r.path.parent != run.path.parent, r.name != entry.base, str(r.path)))
    if not candidates:
      notes.append(f"{labels[run.path]} ({run.title}): no {entry.base} run to compare it with.")
      continue
    if len(candidates) > 1:
      notes.append(f"{labels[run.path]}: several {entry.base} runs; compared with {labels[candidates[0].path]}.")
    pairs.append((run, candidates[0]))
  return pairs, notes


# run.json config keys that differ between seeds of one experiment without changing what is measured: the seed;
# the run's own name (`runs`, set per run by config.run_config); the study's whole table of runs (`run_overrides`,
# already merged into this run's config, and naming the seed runs themselves); where the data sits; and the
# logging / checkpoint cadence (a resumed run replays the same numbers). Everything else must be equal.
SEED_INDEPENDENT_KEYS = ("seed", "runs", "run_overrides", "dataset.data_dir", "pretrain.log_every",
                         "pretrain.checkpoint_every", "pretrain.keep_checkpoints")


@dataclasses.dataclass
class SeedGroup:
  """Runs of one experiment that differ only in config.seed (see `seed_groups`), sorted by seed."""
  runs: list
  label: str

  @property
  def method(self) -> str:
    return self.runs[0].method

  @property
  def seeds(self) -> list:
    return [run_seed(run) for run in self.runs]


def run_seed(run: Run):
  return (run.info.get("config") or {}).get("seed")


def experiment_config(run: Run) -> Optional[dict]:
  """What a run's numbers depend on besides its seed: {"method", "config"} from run.json, config without the
  SEED_INDEPENDENT_KEYS and with config.methods cut to the run's own sub-tree (the only one its registry entry
  reads). None when run.json has no config: such a run is never grouped with another."""
  config = run.info.get("config")
  if not isinstance(config, dict) or not config:
    return None
  config = copy.deepcopy(config)
  for dotted in SEED_INDEPENDENT_KEYS:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.pop(leaf, None)
  if isinstance(config.get("methods"), dict):
    config["methods"] = {run.method: config["methods"].get(run.method)}
  return {"method": run.method, "config": config}


def _flatten(tree, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  if not isinstance(tree, dict) or not tree:
    return {prefix: tree}
  return {flat_key: leaf for key, value in tree.items()
          for flat_key, leaf in _flatten(value, f"{prefix}.{key}" if prefix else key).items()}


def seed_groups(runs: Sequence[Run]) -> list:
  """[SeedGroup] in paper order: runs whose `experiment_config` is equal — same method and same config apart
  from SEED_INDEPENDENT_KEYS — form one group; run names play no part. A group's label is the method's title and
  settings (`Run.settings`); groups that would share a label get the config values that tell them apart."""
  members = {}
  for run in runs:
    experiment = experiment_config(run)
    key = json.dumps(experiment, sort_keys=True, default=str) if experiment is not None else f"path:{run.path}"
    members.setdefault(key, []).append(run)
  groups = []
  for group_runs in members.values():
    group_runs = sorted(group_runs, key=lambda r: (not isinstance(run_seed(r), (int, float)),
                                                   run_seed(r) if isinstance(run_seed(r), (int, float)) else 0,
                                                   r.name, str(r.path)))
    first = group_runs[0]
    groups.append(SeedGroup(group_runs, first.title + (f" ({first.settings})" if first.settings != "—" else "")))
  for label in {g.label for g in groups}:
    clashing = [g for g in groups if g.label == label]
    if len(clashing) > 1:
      flat = [_flatten(experiment_config(g.runs[0]) or {"run": str(g.runs[0].path)}) for g in clashing]
      differing = sorted({key for f in flat for key in f if any(f.get(key) != other.get(key) for other in flat)})
      for group, values in zip(clashing, flat):
        group.label += " [" + ", ".join(f"{key.removeprefix('config.')}={values.get(key)}" for key in differing) + "]"
  return sorted(groups, key=lambda g: sort_key(g.runs[0]))
