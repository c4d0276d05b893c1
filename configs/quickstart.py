"""Embedded default: runs offline on any CPU in a few minutes.

sklearn's 8x8 digits (upsampled to 16x16), a small CNN, and three pretraining runs — SimCLR,
Adaptive FNC and SupCon — each followed by linear evaluation, a light attack suite, geometry and a
small corruption stage. Then `python -m csl_jax.report <workdir> --out <dir>` compares them.
"""
from csl_jax import config as config_lib


def get_config(arg=None):
  variants = config_lib.parse_arg(arg, {"smoke": "a few steps and a tiny evaluation (about a minute on a CPU)"})
  c = config_lib.base_config()
  c.runs = "simclr,afnc,supcon"
  c.dataset.source = "digits"
  c.dataset.image_size = 16
  c.model.encoder = "small_cnn"
  c.model.projection_hidden_dim = 128
  c.model.projection_dim = 64
  c.methods.simclr.temperature = 0.5
  c.methods.afnc.temperature = 0.5
  c.methods.afnc.rho_initial = 0.99
  c.methods.afnc.rho_final = 0.7
  c.augment.crop_scale_min = 0.3     # 16x16 digits do not survive 8% crops
  c.augment.jitter_strength = 0.5
  c.pretrain.epochs = 20
  c.pretrain.batch_size = 256
  c.pretrain.log_every = 25
  c.pretrain.checkpoint_every = 100
  c.linear_eval.knn_k = 20
  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.lr_scaling = "none"
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 2
  c.linear_eval.epochs = 100
  c.linear_eval.batch_size = 256
  c.linear_eval.lr = 0.05
  c.robustness.attacks = ("fgsm:linf:2/255,fgsm:linf:8/255,pgd:linf:8/255:steps=10,pgd:l2:0.25:steps=10,"
                          "pgd:l1:4.0:steps=10,autoattack:linf:8/255")
  # AutoAttack spends its time on the points that stay robust; 64 images keep it under a minute on a CPU.
  c.robustness.num_examples = 64
  c.robustness.batch_size = 64
  c.geometry.tsne_max_points = 360
  c.corruptions.enabled = True
  c.corruptions.names = "gaussian_noise,defocus_blur,brightness,contrast,pixelate,jpeg_compression"
  c.corruptions.severities = "1,3,5"
  c.corruptions.num_examples = 360
  c.eval_batch_size = 360
  if "smoke" in variants:
    config_lib.smoke(c)
  return c
