"""PPG-MAE baseline: a PPG-only masked autoencoder with xMAE's PPG encoder.

The xMAE paper compares against unimodal baselines; this one isolates what the ECG target adds:
the PPG encoder is xMAE's PPG path exactly (UNet-Inception stem, patch 40 -> 25 tokens, learned
positions, 2 pre-LN blocks, projection: 2,301,700 parameters on the paper preset) and it is
trained by reconstructing masked PPG from visible PPG instead of masked ECG from PPG.

Choices (the xMAE code has a `source="ppg"` switch but no released PPG-only objective):
  * Masking is xMAE's ECG masking applied to PPG: anchor mode, ratio 0.8 (one visible 2-s run),
    so the only difference from xMAE is the modality of input and target. `masking.mode=scatter,
    masking.ratio_ppg=0.75` gives the usual MAE / LSM-style random masking instead.
  * Visible patches are encoded and decoded as the reference's single-path MAE does (gather the
    visible waveform, positions per `model.visible_positions`, then mask token + positions, one
    light decoder block and the transposed-convolution head).
  * Loss: MSE on the masked PPG samples, normalized by their count (as xMAE's ECG loss).
  * As in xMAE, the projection head is not reached by the loss, so `embed(ppg=...)` is a fixed
    random linear map of the mean-pooled tokens (the same kind of feature xMAE exports).
"""

from pathlib import Path

import ml_collections as mlc

from xmae_jax import config_lib

# Keys that fix the shape of one xMAE modality path; copied from configs/xmae.py so the
# baseline's PPG encoder cannot drift from xMAE's.
PATH_KEYS = (
    "seq_len",
    "patch_len",
    "d_model",
    "num_heads",
    "depth_ppg",
    "stem_channels",
    "stem_widths",
    "dropout",
    "latent_dim",
    "visible_positions",
)


def model_config(preset: str) -> mlc.ConfigDict:
  return config_lib.model_like(Path(__file__).with_name("xmae.py"), preset, "ppg_mae", PATH_KEYS)


def masking_config() -> mlc.ConfigDict:
  k = mlc.ConfigDict()
  k.mode = "anchor"  # as xMAE's ECG masking (see the module docstring)
  k.ratio_ppg = 0.8  # 20 of 25 PPG patches masked
  k.curriculum = False
  return k


def loss_config() -> mlc.ConfigDict:
  l = mlc.ConfigDict()
  l.w_ppg = 1.0  # masked-waveform MSE on PPG
  return l


def get_config(arg=None):
  return config_lib.assemble(
      arg, model=model_config, masking=masking_config(), loss=loss_config(), presets=PRESETS
  )


# The model follows configs/xmae.py's preset (model_config copies it); the shared train
# schedule per preset is config_lib.COMMON_PRESETS. Nothing else differs per preset.
PRESETS = {}
