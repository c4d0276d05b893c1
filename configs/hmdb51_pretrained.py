"""Table 3 on HMDB51: as `ucf101_pretrained.py` (same clips, attacks and variants) on HMDB51's frame folder,
<root>/{train,test}/<class>/<video>/<frame>.jpg (split 1):

  python -m csl_jax.main --config configs/hmdb51_pretrained.py --workdir runs/table3_hmdb51/tclr \
      --config.init_from=ckpt/tclr_hmdb51 --config.dataset.source=frames:/data/hmdb51_frames
"""
from configs import ucf101_pretrained

VARIANTS = ucf101_pretrained.VARIANTS


def get_config(arg=None):
  return ucf101_pretrained.video_config(arg, "frames:/data/hmdb51_frames")
