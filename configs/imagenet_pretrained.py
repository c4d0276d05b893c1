"""Table 2 and Fig. 3: a published ImageNet checkpoint under attack and under the ImageNet-C corruptions.

One checkpoint per run, converted first (README, "Published checkpoints"), each in its own workdir; the report
over all of them is Table 2 (clean top-1, then robust accuracy ↓P_drop per attack) and Fig. 3:

  python -m csl_jax.convert --arch vit_b16 --format dino dino_vitbase16_pretrain.pth ckpt/dino_vitb16
  python -m csl_jax.main --config configs/imagenet_pretrained.py --workdir runs/table2/dino_vitb16 \
      --config.init_from=ckpt/dino_vitb16 --config.dataset.data_dir=/data/tfds
  ... (supervised / SimCLR / SwAV / BYOL ResNet-50, supervised / MoCo v3 / DINO ViT-B/16)
  python -m csl_jax.report runs/table2 --out runs/table2/report

Data: TFDS imagenet2012 (a manual download; validation is the test split, train feeds the linear probe of
releases without a classifier), or an image folder: --config.dataset.source=folder:/data/imagenet
--config.dataset.test_split=val (<root>/{train,val}/<wnid>/*.JPEG; class directories named by WordNet id sort
into the releases' class order). With only the validation images, --config.dataset.train_split='' evaluates
releases with their own classifier. Every image: shorter side to 256, centre crop 224 (the releases' evaluation
transform, `dataset.preprocess='resize_crop'`), decoded per batch.

Attacks (Table 2): FGSM ℓ∞ 0.25/255 and 1/255; PGD ℓ∞ 0.25/255 and 1/255 and PGD ℓ2 0.5, 40 steps (the paper:
"performing 40 iterations"; step 2.5 ε / 40); AutoAttack ℓ∞ 0.25/255 (standard). On the first 5,000 validation
images (TFDS stores them shuffled; a folder split is read in a fixed shuffled order): the paper does not say how
many, 5,000 is RobustBench's ImageNet set; --config.robustness.num_examples=0 for all 50,000.
Corruptions (Fig. 3): the 15 ImageNet-C corruptions at severities 1–5, applied on the fly with ImageNet-C's
parameters to the 224² crops (Fig. 3 shows severity 1 and the mean), 5,000 images.

Variants: `:smoke` — sklearn digits and an untrained small CNN (init_from="random"), Table 2's attack families
with 2 steps, one corruption: checks the whole chain on a CPU in about a minute without any download.
"""
from csl_jax import config as config_lib

VARIANTS = {"smoke": "digits, an untrained small CNN (init_from='random'), a tiny evaluation: a CPU check"}

TABLE2_ATTACKS = ("fgsm:linf:0.25/255,fgsm:linf:1/255,pgd:linf:0.25/255:steps=40,pgd:linf:1/255:steps=40,"
                  "pgd:l2:0.5:steps=40,autoattack:linf:0.25/255")


def checkpoint_config():
  """What every published-checkpoint config shares: one run of method "pretrained", nothing to train."""
  c = config_lib.base_config()
  c.runs = "pretrained"
  c.init_from = ""                    # required: --config.init_from=<dir from python -m csl_jax.convert>
  c.linear_eval.epochs = 100          # the probe of releases without a classifier
  c.linear_eval.batch_size = 1024
  return c


def smoke(c, attacks: str):
  """The shared `:smoke` of the published-checkpoint configs: digits, untrained small CNN, `attacks` (the config's
  own families with 2 steps and no AutoAttack), the streamed linear probe (feature_cache_gb=0)."""
  c.init_from = "random"
  c.dataset.source = "digits"
  c.dataset.train_split, c.dataset.test_split = "train", "test"
  c.dataset.image_size = 16
  c.dataset.preprocess, c.dataset.resize_size, c.dataset.clip_frames = "fit", 0, 0
  c.dataset.data_dir = ""
  c.model.encoder = "small_cnn"
  c.linear_eval.epochs = 2
  c.linear_eval.batch_size = 128
  c.linear_eval.knn_k = 20
  c.linear_eval.feature_cache_gb = 0.0  # exercises the streamed probe
  c.robustness.attacks = attacks
  c.robustness.num_examples = 32
  c.robustness.batch_size = 32
  c.geometry.num_examples = 120
  c.geometry.tsne_max_points = 0
  c.corruptions.names = "gaussian_noise"
  c.corruptions.severities = "1"
  c.corruptions.num_examples = 64
  c.eval_batch_size = 120


def get_config(arg=None):
  variants = config_lib.parse_arg(arg, VARIANTS)
  c = checkpoint_config()
  c.dataset.source = "tfds:imagenet2012"
  c.dataset.train_split, c.dataset.test_split = "train", "validation"
  c.dataset.preprocess, c.dataset.resize_size, c.dataset.image_size = "resize_crop", 256, 224
  c.model.encoder = "resnet50_imagenet"  # read only by init_from="random"
  # All 1.28M training features in memory for the probe (ResNet-50: 10.5 GB, ViT-B/16: 3.9 GB); lower it on a
  # smaller host and the probe streams (100 encoder passes) or set linear_eval.num_train_examples.
  c.linear_eval.feature_cache_gb = 16.0
  c.augment.jitter_strength, c.augment.blur = 1.0, True  # SimCLR's ImageNet views (geometry's second view)
  c.robustness.attacks = TABLE2_ATTACKS
  c.robustness.num_examples = 5000
  c.robustness.batch_size = 128
  c.geometry.num_examples = 5000
  c.corruptions.enabled = True
  c.corruptions.names = "all"
  c.corruptions.severities = "1,2,3,4,5"
  c.corruptions.num_examples = 5000
  c.eval_batch_size = 256
  if "smoke" in variants:
    smoke(c, "fgsm:linf:0.25/255,fgsm:linf:1/255,pgd:linf:1/255:steps=2,pgd:l2:0.5:steps=2")
  return c
