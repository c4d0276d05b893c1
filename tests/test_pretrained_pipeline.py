"""A published checkpoint through the whole pipeline: torch twin -> .pth -> `python -m csl_jax.convert` ->
`configs/imagenet_pretrained.py:smoke` on a streamed ImageNet-shaped folder of real photos (mixed sizes,
resize 256 / crop 224) -> streamed linear probe, attacks, geometry, ImageNet-C corruptions -> report.
Plus: what `--config.init_from` accepts, and when a release's own classifier is used."""
import json
import pathlib

import numpy as np
import pytest

from configs import imagenet_pretrained
from csl_jax import config as config_lib
from csl_jax import convert, pipeline, pretrained
from csl_jax.analysis import report
from tests import photo_folders

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(converted dir, .pth path): a random-weight ViT-S/16 (DINO layout) with a 3-class classifier `head`."""
  from csl_jax.models import torch_twins
  root = tmp_path_factory.mktemp("release")
  torch.manual_seed(0)
  twin = torch_twins.vision_transformer("vit_s16", num_classes=NUM_CLASSES)
  src = root / "dino_deitsmall16_pretrain.pth"
  torch.save(twin.state_dict(), src)
  assert convert.main(["--arch", "vit_s16", "--format", "dino", str(src), str(root / "converted")]) == 0
  return root / "converted", src


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  # 8 training and 8 validation photos (4 classes): one batch on the 8 test devices; ViT-S/16 at 224² costs ~0.3 s
  # per image and forward pass on the 2-core CI box, so every image counts.
  return photo_folders.imagenet_like_folder(tmp_path_factory.mktemp("imagenet"), per_class={"train": 2, "val": 2},
                                            classes=photo_folders.PHOTOS)


def _config(photos, init_from):
  c = imagenet_pretrained.get_config("smoke")
  c.init_from = str(init_from)
  c.dataset.source = f"folder:{photos}"
  c.dataset.train_split, c.dataset.test_split = "train", "val"
  c.dataset.preprocess, c.dataset.resize_size, c.dataset.image_size = "resize_crop", 256, 224
  c.linear_eval.release_head = False  # the probe path (DINO's releases have no classifier)
  c.linear_eval.epochs = 1
  c.robustness.attacks = "fgsm:linf:1/255"  # one attack (PGD: tests/attacks; on clips: tests/data)
  c.robustness.checks = False  # fra31's checks cost 8 forward passes per image; tests/attacks covers them
  c.robustness.num_examples = 8
  c.robustness.batch_size = 8
  c.eval_batch_size = 8
  return c


def test_converted_vit_through_the_imagenet_pipeline_and_report(checkpoint, photos, tmp_path):
  converted, src = checkpoint
  workdir = tmp_path / "dino_vits16"
  results = pipeline.run(_config(photos, converted), workdir)["pretrained"]
  assert set(results) == {"linear_eval", "robustness", "geometry", "corruptions"}

  info = json.loads((workdir / "run.json").read_text())
  assert (info["method"], info["title"], info["encoder"], info["total_steps"]) == (
      "pretrained", "DINO ViT-S/16", "vit_s16", 0)
  sha = convert.sha256_file(src)
  assert info["init_from"]["source"]["sha256"] == sha
  assert info["class_names"] == ["astronaut", "chelsea", "coffee", "rocket"]
  assert not (workdir / "checkpoints").exists() and not (workdir / "pretrain_metrics.jsonl").exists()
  for result in results.values():  # provenance names the release, by content
    assert result["provenance"]["model"]["init_from"]["source_sha256"] == sha
    assert result["provenance"]["model"]["head"] == "linear_probe"

  linear_eval = results["linear_eval"]
  assert linear_eval["num_test"] == 8 and linear_eval["knn_top1"] is None  # streamed probe: no kNN bank
  assert json.loads((workdir / "linear_head.json").read_text())["num_train_examples"] == 0
  robustness = results["robustness"]
  assert [row["spec"] for row in robustness["attacks"]] == ["fgsm:linf:1/255"]
  assert robustness["num_examples"] == 8
  assert all(row["robust_accuracy"] <= robustness["clean_accuracy"] for row in robustness["attacks"])
  assert results["corruptions"]["parameter_table"] == "imagenet_c"  # ImageNet-C's parameters at 224²
  assert results["geometry"]["num_examples"] == 8

  # A re-run finds every result current (same checkpoint digests, same settings) and recomputes nothing.
  stamps = {p.name: p.stat().st_mtime_ns for p in workdir.glob("*.json") if p.name != "run.json"}
  pipeline.run(_config(photos, converted), workdir)
  assert {p.name: p.stat().st_mtime_ns for p in workdir.glob("*.json") if p.name != "run.json"} == stamps

  # Table 2's row: the release's title, clean accuracy and "robust ↓P_drop" per attack.
  written = report.write_report([tmp_path], tmp_path / "report")
  markdown = written["markdown"].read_text()
  row = next(line for line in markdown.splitlines() if line.startswith("| DINO ViT-S/16 |") and "↓" in line)
  assert f"{100 * robustness['clean_accuracy']:.1f}" in row and "Gap-closed" not in markdown


def _write_meta(directory: pathlib.Path, meta) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "meta.json").write_text(json.dumps(meta))
  return directory


def test_init_from_must_be_a_converted_checkpoint(checkpoint, photos, tmp_path):
  converted, _ = checkpoint
  config_lib.validate(_config(photos, converted))  # the real one passes
  (tmp_path / "some_dir").mkdir()
  (tmp_path / "some_dir" / "model.pth").write_bytes(b"not a converted checkpoint")
  bad = {
      tmp_path / "some_dir": r"init_from=.*some_dir.*not a converted checkpoint.*no meta\.json.*python -m csl_jax\.convert",
      tmp_path / "missing": r"not a converted checkpoint.*no such directory",
      _write_meta(tmp_path / "other_json", {"model": "resnet"}): r"meta\.json lacks fields",
      _write_meta(tmp_path / "no_variables", json.loads((converted / "meta.json").read_text())):
          r"no_variables has meta\.json but no variables/ directory",
  }
  for path, message in bad.items():
    with pytest.raises(ValueError, match=message):
      config_lib.validate(_config(photos, path))
  wrong_method = _config(photos, converted)
  wrong_method.runs = "simclr"
  with pytest.raises(ValueError, match="method 'simclr' pretrains; set --config.runs=pretrained"):
    config_lib.validate(wrong_method)
  missing = _config(photos, "")
  with pytest.raises(ValueError, match=r"method 'pretrained' evaluates a converted checkpoint: set --config\.init_from"):
    config_lib.validate(missing)


def test_release_classifier_is_used_when_it_fits_the_dataset(checkpoint, photos):
  converted, _ = checkpoint
  config = _config(photos, converted)
  config.linear_eval.release_head = True
  meta, variables = convert.load_converted(converted)
  own = pretrained.load(config, num_classes=NUM_CLASSES, image_shape=(224, 224, 3))
  assert own.has_classifier and own.source["variables_sha256"] == meta["variables_sha256"]
  model, model_variables = pretrained.Release.classifier(own.model, own.variables, None, NUM_CLASSES)
  assert model.num_classes == NUM_CLASSES
  np.testing.assert_array_equal(model_variables["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
  # A classifier for other classes (or release_head=False) is set aside: the features get a linear probe.
  for num_classes, release_head in ((NUM_CLASSES + 1, True), (NUM_CLASSES, False)):
    config.linear_eval.release_head = release_head
    other = pretrained.load(config, num_classes=num_classes, image_shape=(224, 224, 3))
    assert not other.has_classifier and "head" not in other.variables["params"]
    probe = {"kernel": np.ones((384, num_classes), np.float32), "bias": np.zeros(num_classes, np.float32)}
    model, model_variables = pretrained.Release.classifier(other.model, other.variables, probe, num_classes)
    assert model.num_classes == num_classes
    np.testing.assert_array_equal(model_variables["params"]["head"]["kernel"], probe["kernel"])
  # Without a training split only the release's own classifier can be evaluated.
  config.dataset.train_split = ""
  config.linear_eval.release_head = True
  config_lib.validate(config)
  config.linear_eval.release_head = False
  with pytest.raises(ValueError, match="needs a training split"):
    config_lib.validate(config)
