"""CLIP baseline: ECG<->PPG contrastive pretraining with xMAE's two modality encoders.

The xMAE paper's multimodal comparison point (its code carries leftover `clip` keys). Each
modality has an xMAE path of the reference's shape (PPG: stem, patch 40, positions, 2 blocks,
projection = 2,301,700 parameters on the paper preset; ECG: the same with 1 block), run on the
whole unmasked signal; the projections of the mean-pooled tokens are pulled together by a
symmetric InfoNCE over the batch.

Choices:
  * Temperature: CLIP's, learnable, initialized at 0.07 and clipped at 1/tau <= 100.
  * Positives: the time-aligned ECG/PPG pair of one segment ("segment"); "subject" makes every
    ECG/PPG pair of the same subject a positive and needs batch["subject"] from the pipeline.
  * No masking; the two modalities are the views (the pipeline's data.augment, off by default,
    can add training augmentations).
  * `embed(ppg=...)` / `embed(ecg=...)` are the projected embeddings the loss aligns;
    with both given it is their mean.
"""

from pathlib import Path

import ml_collections as mlc

from xmae_jax import config_lib

PATH_KEYS = (
    "seq_len",
    "patch_len",
    "d_model",
    "num_heads",
    "depth_ppg",
    "depth_ecg",
    "stem_channels",
    "stem_widths",
    "dropout",
    "latent_dim",
)


def model_config(preset: str) -> mlc.ConfigDict:
  return config_lib.model_like(Path(__file__).with_name("xmae.py"), preset, "clip", PATH_KEYS)


def masking_config() -> mlc.ConfigDict:
  k = mlc.ConfigDict()
  k.curriculum = False  # nothing is masked
  return k


def loss_config() -> mlc.ConfigDict:
  l = mlc.ConfigDict()
  l.w_contrast = 1.0
  l.positives = "segment"  # "segment" | "subject" (needs batch["subject"])
  l.temperature = 0.07  # CLIP's initial temperature
  l.learn_temperature = True
  return l


def get_config(arg=None):
  return config_lib.assemble(
      arg, model=model_config, masking=masking_config(), loss=loss_config(), presets=PRESETS
  )


# The model follows configs/xmae.py's preset (model_config copies it); the shared train
# schedule per preset is config_lib.COMMON_PRESETS. Nothing else differs per preset.
PRESETS = {}
