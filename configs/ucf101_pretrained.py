"""Table 3: a published R(2+1)D-18 video checkpoint (supervised, TCLR, CVRL) under attack on UCF101.

Videos as folders of decoded frames, <root>/{train,test}/<class>/<video>/<frame>.jpg (the official split 1 is the
paper's usual choice; extract frames with e.g. `ffmpeg -i v.avi <video>/%05d.jpg`). Each video is one clip of 16
frames sampled uniformly over it, every frame resized to 128 (shorter side) and centre-cropped to 112: clips
16 x 112 x 112, the releases' input. A release with a classifier for the dataset's classes (fine-tuned on
UCF101) is evaluated with it; otherwise a linear probe is trained on the train split's clip features.

  python -m csl_jax.convert --arch r2plus1d_18 --format tclr tclr_r2p1d_k400.pth ckpt/tclr
  python -m csl_jax.main --config configs/ucf101_pretrained.py --workdir runs/table3_ucf101/tclr \
      --config.init_from=ckpt/tclr --config.dataset.source=frames:/data/ucf101_frames
  python -m csl_jax.report runs/table3_ucf101

Attacks (Table 3): FGSM ℓ∞ 1, 2 and 4 /255; PGD ℓ∞ 1 and 2 /255 (40 steps, as Table 2: the paper gives no count
for videos); AutoAttack ℓ∞ 1/255 (standard); on every test video. No common corruptions (they are defined for
images). Variants: `:smoke` (digits and an untrained small CNN: a CPU check of the chain, no video).
"""
from configs import imagenet_pretrained
from csl_jax import config as config_lib

VARIANTS = imagenet_pretrained.VARIANTS

TABLE3_ATTACKS = ("fgsm:linf:1/255,fgsm:linf:2/255,fgsm:linf:4/255,pgd:linf:1/255:steps=40,pgd:linf:2/255:steps=40,"
                  "autoattack:linf:1/255")


def video_config(arg, source: str):
  """The Table 3 recipe on the frame folder `source` ("frames:<root>"), then the variants named in `arg`."""
  variants = config_lib.parse_arg(arg, VARIANTS)
  c = imagenet_pretrained.checkpoint_config()
  c.dataset.source = source
  c.dataset.train_split, c.dataset.test_split = "train", "test"
  c.dataset.clip_frames = 16
  c.dataset.preprocess, c.dataset.resize_size, c.dataset.image_size = "resize_crop", 128, 112
  c.model.encoder = "r2plus1d_18"  # read only by init_from="random"
  c.linear_eval.batch_size = 256
  c.robustness.attacks = TABLE3_ATTACKS
  c.robustness.num_examples = 0
  c.robustness.batch_size = 32
  c.geometry.num_examples = 0
  c.corruptions.enabled = False
  c.eval_batch_size = 64
  if "smoke" in variants:
    imagenet_pretrained.smoke(c, "fgsm:linf:1/255,fgsm:linf:4/255,pgd:linf:2/255:steps=2")
    c.corruptions.enabled = False
  return c


def get_config(arg=None):
  return video_config(arg, "frames:/data/ucf101_frames")
