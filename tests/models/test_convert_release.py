"""ResNet-50 releases (torchvision, SimCLR, SwAV, BYOL), the `python -m csl_jax.convert` CLI and `load_converted`."""
import gc
import json
import pathlib
import shutil
import time

import chex
import numpy as np
import pytest

from csl_jax import convert as convert_cli
from csl_jax.models import convert, convert_release
from tests.models import release_checks as rc

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

IMAGENET = (convert_release.IMAGENET_MEAN, convert_release.IMAGENET_STD)
UNNORMALISED = ((0.0,) * 3, (1.0,) * 3)


@pytest.fixture(scope="module")
def resnet():
  """(encoder twin, fc, torchvision state dict with fc): seeded random weights, random BN statistics."""
  torch.manual_seed(0)
  encoder = rc.randomize_norms(convert.build_torch_encoder("resnet50_imagenet"), seed=0)
  fc = torch.nn.Linear(2048, 1000).eval()
  return encoder, fc, {**encoder.state_dict(), **rc.prefixed(fc.state_dict(), "fc.")}


@pytest.fixture(scope="module")
def images():
  return rc.photos(3)  # astronaut, chelsea, coffee


@pytest.fixture(scope="module")
def references(resnet, images):
  """{normalisation name: (features, logits)} of the twin on the photos."""
  encoder, fc, _ = resnet
  return {name: rc.torch_reference(encoder, fc, images, *stats)
          for name, stats in (("imagenet", IMAGENET), ("unnormalised", UNNORMALISED))}


def encoder_only(state: dict) -> dict:
  return {k: v for k, v in state.items() if not k.startswith("fc.")}


def mlp(prefix: str, widths=(2048, 64, 16), bn: bool = False) -> dict:
  generator = torch.Generator().manual_seed(7)
  out = {}
  for i, (n, o) in enumerate(zip(widths[:-1], widths[1:])):
    out[f"{prefix}{3 * i}.weight"] = torch.randn(o, n, generator=generator)
    out[f"{prefix}{3 * i}.bias"] = torch.zeros(o)
    if bn and i == 0:
      out.update({f"{prefix}1.{k}": torch.ones(o) for k in ("weight", "bias", "running_mean", "running_var")})
      out[f"{prefix}1.num_batches_tracked"] = torch.tensor(5)
  return out


def test_torchvision_release(tmp_path, resnet, images, references):
  features, logits, meta = rc.convert_and_run(tmp_path, "tv", "resnet50", "torchvision", resnet[2], images)
  rc.assert_close(features, references["imagenet"][0], "ResNet-50 torchvision features")
  rc.assert_close(logits, references["imagenet"][1], "ResNet-50 torchvision logits")
  assert meta["has_head"] and meta["num_classes"] == 1000 and meta["feature_dim"] == 2048
  assert meta["mean"] == list(IMAGENET[0]) and meta["input_shape"] == [224, 224, 3]
  assert meta["source"]["sha256"] == convert_cli.sha256_file(tmp_path / "tv.pth")


def test_simclr_releases(tmp_path, resnet, images, references):
  # tonylins/simclr-converter: {'state_dict': torchvision keys + fc (the linear-evaluation head)}; [0, 1] inputs.
  features, logits, meta = rc.convert_and_run(tmp_path, "simclr", "resnet50", "simclr", {"state_dict": resnet[2]},
                                              images)
  rc.assert_close(features, references["unnormalised"][0], "ResNet-50 SimCLR features")
  rc.assert_close(logits, references["unnormalised"][1], "ResNet-50 SimCLR logits")
  assert meta["has_head"] and meta["mean"] == [0.0] * 3 and meta["std"] == [1.0] * 3
  _, reference = convert_cli.load_converted(tmp_path / "simclr_converted")
  # Spijkervet/SimCLR (encoder.* + projector.*) and sthalles/SimCLR (backbone.*, projector MLP as backbone.fc.N):
  # the same encoder weights must come out bit-identical, without a classifier.
  for layout in ({**rc.prefixed(encoder_only(resnet[2]), "encoder."), **mlp("projector.")},
                 rc.prefixed({**encoder_only(resnet[2]), **mlp("fc.")}, "backbone.")):
    variables, info = convert_release.convert_release(layout, "resnet50", "simclr")
    assert not info["has_head"] and info["ignored_keys"] and info["prefix"] in ("encoder.", "backbone.")
    chex.assert_trees_all_equal(variables["params"]["encoder"], reference["params"]["encoder"])
    chex.assert_trees_all_equal(variables["batch_stats"], reference["batch_stats"])


def test_swav_release_through_the_cli(tmp_path, resnet, images, references, capsys):
  """swav_800ep_pretrain.pth.tar: module.* torchvision keys, projection_head.*, prototypes.weight; no fc."""
  state = rc.prefixed({**encoder_only(resnet[2]), **mlp("projection_head.", bn=True),
                       "prototypes.weight": torch.randn(3000, 16)}, "module.")
  src, out_dir = tmp_path / "swav.pth.tar", tmp_path / "swav"
  torch.save(state, src)
  assert convert_cli.main(["--arch", "resnet50", "--format", "swav", str(src), str(out_dir)]) == 0
  assert "no classifier: train a linear probe" in capsys.readouterr().out
  meta, variables = convert_cli.load_converted(out_dir)
  features, logits = rc.flax_forward(convert_cli.converted_model(meta), variables, images, with_head=False)
  rc.assert_close(features, references["imagenet"][0], "ResNet-50 SwAV features")
  assert logits is None and meta["needs_linear_probe"] and meta["format"] == "swav"
  assert sorted(meta["ignored_keys"]) == sorted(k.removeprefix("module.") for k in state
                                                if k.startswith(("module.projection_head.", "module.prototypes.")))


def test_byol_solo_learn_release(tmp_path, resnet, images, references):
  """solo-learn: Lightning checkpoint; online backbone, projector, predictor, momentum copies, online classifier."""
  encoder = encoder_only(resnet[2])
  state = {**rc.prefixed(encoder, "backbone."), **rc.prefixed(rc.perturbed(encoder, 1), "momentum_backbone."),
           **mlp("projector."), **mlp("momentum_projector."), **mlp("predictor.", (16, 64, 16)),
           **{f"classifier.{k}": v for k, v in resnet[1].state_dict().items()}}
  checkpoint = {"epoch": 399, "global_step": 1000, "pytorch-lightning_version": "1.9.0", "state_dict": state}
  features, logits, meta = rc.convert_and_run(tmp_path, "byol", "resnet50", "byol", checkpoint, images)
  rc.assert_close(features, references["imagenet"][0], "ResNet-50 BYOL features")
  rc.assert_close(logits, references["imagenet"][1], "ResNet-50 BYOL logits (solo-learn online classifier)")
  assert meta["prefix"] == "backbone." and meta["has_head"]


def test_missing_and_unexpected_keys_are_listed(resnet):
  state = resnet[2]
  missing = {k: v for k, v in state.items() if k != "layer2.0.downsample.1.running_var"}
  with pytest.raises(ValueError, match=r"missing keys \['layer2\.0\.downsample\.1\.running_var'\]"):
    convert_release.convert_release(missing, "resnet50", "torchvision")
  with pytest.raises(ValueError, match=r"unexpected keys \['layer2\.0\.se\.weight'\]"):
    convert_release.convert_release({**state, "layer2.0.se.weight": torch.zeros(2)}, "resnet50", "torchvision")
  with pytest.raises(ValueError, match=r"outside the encoder prefix 'backbone\.'.*\['memory_bank'\]"):
    convert_release.convert_release({**rc.prefixed(state, "backbone."), "memory_bank": torch.zeros(2)}, "resnet50",
                                    "byol")
  # A user-given prefix that matches nothing names the prefixes there are.
  with pytest.raises(ValueError, match=r"No key starts with prefix 'encoder_q\.'; top-level prefixes"):
    convert_release.convert_release(rc.prefixed(state, "backbone."), "resnet50", "byol", prefix="encoder_q.")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, resnet):
  """A converted torchvision ResNet-50 (with its fc); tests that damage it work on copies."""
  root = tmp_path_factory.mktemp("converted")
  torch.save(resnet[2], root / "tv.pth")
  convert_cli.convert_checkpoint("resnet50", "torchvision", root / "tv.pth", root / "out")
  return root


def damaged_copy(converted, tmp_path) -> pathlib.Path:
  out = tmp_path / "copy"
  shutil.copytree(converted / "out", out)
  return out


def test_load_converted_rejects_what_is_not_a_converted_checkpoint(tmp_path, converted):
  with pytest.raises(convert_cli.ConvertedCheckpointError, match="no such directory"):
    convert_cli.load_converted(tmp_path / "absent")
  with pytest.raises(convert_cli.ConvertedCheckpointError, match="has no meta.json"):
    convert_cli.load_converted(tmp_path)
  (tmp_path / "meta.json").write_text("{not json")
  with pytest.raises(convert_cli.ConvertedCheckpointError, match="meta.json is unreadable"):
    convert_cli.load_converted(tmp_path)
  (tmp_path / "meta.json").write_text(json.dumps({"arch": "resnet50"}))
  with pytest.raises(convert_cli.ConvertedCheckpointError, match="lacks fields"):
    convert_cli.load_converted(tmp_path)
  # A training workdir's orbax checkpoint is not one either.
  with pytest.raises(convert_cli.ConvertedCheckpointError, match="has no meta.json"):
    convert_cli.load_converted(converted / "out" / "variables")


# orbax's failed read of the corrupt data leaves tensorstore reads in flight whose callbacks find orbax's event loop
# closed ("Event loop is closed", an unraisable exception from another thread): harmless. The test waits for them
# (below) so that the warning is raised, and ignored, here rather than in whichever test runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_load_converted_detects_damage(tmp_path, converted):
  out = damaged_copy(converted, tmp_path / "a")
  shutil.rmtree(out / "variables")
  with pytest.raises(convert_cli.ConvertedCheckpointError, match="missing or unreadable"):
    convert_cli.load_converted(out)

  out = damaged_copy(converted, tmp_path / "b")
  meta = json.loads((out / "meta.json").read_text())
  (out / "meta.json").write_text(json.dumps({**meta, "has_head": False}))
  with pytest.raises(convert_cli.ConvertedCheckpointError, match=r"do not fit.*head/bias \(stored \(1000,\)"):
    convert_cli.load_converted(out)

  out = damaged_copy(converted, tmp_path / "c")
  data = max((p for p in (out / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  blob = bytearray(data.read_bytes())
  blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)  # zero 64 bytes in the middle of the largest data file
  data.write_bytes(bytes(blob))
  with pytest.raises(convert_cli.ConvertedCheckpointError, match="corrupt"):
    convert_cli.load_converted(out)
  time.sleep(1.0)
  gc.collect()


def test_cli_options_and_failures(tmp_path, converted, resnet, capsys):
  src = converted / "tv.pth"
  # An existing converted checkpoint is only replaced with --overwrite; any other non-empty directory never.
  assert convert_cli.main(["--arch", "resnet50", "--format", "torchvision", str(src), str(converted / "out")]) == 2
  assert "--overwrite" in capsys.readouterr().err
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "a.txt").write_text("keep me")
  assert convert_cli.main(["--arch", "resnet50", "--format", "torchvision", str(src), str(tmp_path / "notes"),
                           "--overwrite"]) == 2
  assert (tmp_path / "notes" / "a.txt").read_text() == "keep me"
  capsys.readouterr()
  # Wrong arch for the file: the message lists missing and unexpected keys.
  assert convert_cli.main(["--arch", "r2plus1d_18", "--format", "torchvision", str(src), str(tmp_path / "x")]) == 2
  err = capsys.readouterr().err
  assert "missing keys ['layer1.0.conv1.0.0.weight'" in err and "unexpected keys ['bn1.bias'" in err
  assert not (tmp_path / "x").exists()
  # A pickle that weights_only refuses is read only with --allow-pickle.
  pickled = tmp_path / "pickled.pth"
  torch.save({"state_dict": resnet[2], "run_dir": pathlib.PurePosixPath("/runs/1")}, pickled)
  assert convert_cli.main(["--arch", "resnet50", "--format", "torchvision", str(pickled), str(tmp_path / "p")]) == 2
  assert "weights_only=True" in capsys.readouterr().err
  assert convert_cli.main(["--arch", "resnet50", "--format", "torchvision", str(pickled), str(tmp_path / "p"),
                           "--allow-pickle", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]) == 0
  meta, variables = convert_cli.load_converted(tmp_path / "p")
  assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3
  _, reference = convert_cli.load_converted(converted / "out")
  chex.assert_trees_all_equal(variables, reference)
  assert convert_cli.main(["--list-formats"]) == 0
  listing = capsys.readouterr().out
  assert all(f"{name} (" in listing for name in convert_release.FORMATS)
  np.testing.assert_array_equal(variables["params"]["head"]["bias"], resnet[1].bias.detach().numpy())
