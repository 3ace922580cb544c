"""M2AE ("Biosignal Fingerprinting", arXiv 2605.09579): a multimodal masked autoencoder.

What the paper states (Liu et al., "Biosignal Fingerprinting: A Cross-Modal PPG-ECG Foundation
Model", arXiv:2605.09579, 2026: its front matter, and a seminar summary of it): ECG and
PPG encoders over patches of 10-s segments, a shared bottleneck whose mean-pooled output is the
"fingerprint", dual decoders (ECG, PPG) that reconstruct either signal, also from the other
modality alone with the encoder frozen, complementary masking, masked reconstruction jointly
with a cross-modal contrastive (InfoNCE) loss with augmentation positives, and inference from
either modality alone. The paper body (sizes, rates, ratios, weights) was not available, so
everything else below is our choice.

Assumptions (each is a config value; the README copies this list):
  A1  Input: 100 Hz x 10 s (1000 samples), per-segment min-max to [-1, 1]: xMAE's data, so both
      models share one prepared dataset and pipeline. (The paper's rate is unknown; 125 or 250 Hz
      are likelier for its corpus.)
  A2  Each modality encoder is xMAE's path design: UNet-Inception stem (32 channels), patch 40
      (0.4 s, 25 tokens), learned positions, pre-LN transformer blocks; d_model 256, 8 heads,
      depth 2 for both ECG and PPG (symmetric, as the paper names no primary modality).
  A3  MAE-style encoders: only the visible patches are encoded. As in xMAE's path, they are
      concatenated into one shorter waveform for the stem (so no masked sample leaks into a
      visible token through the convolutions), then get the positions of their true patch
      indices (not xMAE's compact 0..Nk-1 quirk). With nothing masked this is the plain path.
  A4  Shared bottleneck: the present tokens of both modalities, each plus a learned modality
      embedding, go through 2 shared pre-LN transformer blocks, then LayerNorm and a linear
      projection to the 256-d latent ("compact latent representation"). The fingerprint is the
      mean of the latent tokens over all present tokens; with one modality it is that
      modality's tokens only, so it depends on nothing else.
  A5  Dual decoders, one per target modality, each 2 light pre-LN blocks (MLP x2) at d_model
      over [latent tokens (linear to d_model) + decoder positions + source-modality embedding;
      25 query tokens = a learned mask token + positions + target-modality embedding], then a
      LayerNorm (MAE's decoder norm) and xMAE's transposed-convolution head on the query tokens.
      Either decoder reads whatever tokens are present, so PPG->ECG and ECG->PPG work from one
      modality.
  A6  Complementary masking: the ECG mask is drawn per example (mode "block": one contiguous
      masked run; ratio 0.5 -> 12 of 25 patches, 4.8 s) and the PPG mask is its complement
      (13 masked), so every patch is visible in exactly one modality. A long run cannot be filled
      in from the same signal's neighbouring beats, which is the point of complementary masks
      (the missing span must come from the other modality), and it keeps the stem's input
      nearly contiguous (A3). `masking.mode` may be any xMAE mode (scatter, mixed, anchor);
      `masking.ratio_ecg` moves the split and the PPG ratio follows.
  A7  Reconstruction: MSE on the masked samples of each signal, normalized by the masked count
      (as xMAE), weights 1 and 1, decoded from the joint bottleneck (both modalities' visible
      tokens). Added: cross-modal reconstruction of the whole ECG from the PPG tokens alone and
      of the whole PPG from the ECG tokens alone (weight 0.5 each), because the paper reports
      both directions from a frozen encoder and the joint pass never shows a decoder an input
      without any token of its target.
  A8  Contrastive: symmetric InfoNCE between the ECG-only and PPG-only fingerprints of the batch
      (CLIP form), temperature learnable from 0.07 (scale clipped at 100), weight 0.01
      (CAV-MAE's weight for the same MAE + contrastive combination). As in CAV-MAE, the
      single-modality fingerprints in training come from the masked inputs: each encoder runs
      once per step on its visible patches, and the bottleneck runs on both modalities' tokens
      (A7) and on each modality's alone. Under complementary masks the ECG and PPG of a pair
      then cover disjoint times of the segment, so they must match by what the segment shares
      (rate, morphology), not by aligned samples. Inference fingerprints use the whole signal.
  A9  Augmentation positives: a second view of each signal (amplitude x U(0.8, 1.2), Gaussian
      noise std 0.02, time shift up to +-6 samples with edge padding, made on the device from
      the step key), encoded with the same mask in the same encoder call; InfoNCE between each
      modality's fingerprint and its view's, weight 0.01 (mean of the ECG and PPG terms).
  A10 Positives are the time-aligned pair of one segment by default ("segment"): the pipeline's
      batches mix thousands of subjects, so same-subject repeats are rare, and it needs no
      subject ids. "subject" (notes §11) counts every same-subject pair as positive (SupCon
      averaging) and needs batch["subject"].
  A11 Optimization: xMAE's (AdamW 3e-4, betas 0.9/0.95, wd 0.01, 10% warm-up then cosine,
      batch 512); dropout 0.1.
"""

import ml_collections as mlc

from xmae_jax import config_lib


def model_config() -> mlc.ConfigDict:
  m = mlc.ConfigDict()
  m.name = "m2ae"
  m.seq_len = 1000  # A1
  m.patch_len = 40  # A2
  m.d_model = 256  # A2
  m.num_heads = 8
  m.depth_ecg = 2  # A2
  m.depth_ppg = 2
  m.depth_shared = 2  # A4
  m.depth_decoder = 2  # A5
  m.decoder_mlp_ratio = 2.0
  m.stem_channels = 32
  m.stem_widths = (32, 64, 128)
  m.dropout = 0.1
  m.latent_dim = 256  # A4
  return m


def masking_config() -> mlc.ConfigDict:
  k = mlc.ConfigDict()
  k.mode = "block"  # A6; any mode of xmae_jax.models.masking
  k.ratio_ecg = 0.5  # PPG gets the complement
  k.curriculum = False
  return k


def loss_config() -> mlc.ConfigDict:
  l = mlc.ConfigDict()
  l.w_ecg = 1.0  # A7 masked ECG
  l.w_ppg = 1.0  # A7 masked PPG
  l.w_cross_ecg = 0.5  # A7 whole ECG from PPG alone
  l.w_cross_ppg = 0.5  # A7 whole PPG from ECG alone
  l.w_contrast = 0.01  # A8
  l.w_augment = 0.01  # A9
  l.positives = "segment"  # A10: "segment" | "subject"
  l.temperature = 0.07
  l.learn_temperature = True
  l.view = mlc.ConfigDict()  # A9: the augmented second view
  l.view.scale_range = (0.8, 1.2)
  l.view.noise_std = 0.02
  l.view.max_shift = 6
  return l


def get_config(arg=None):
  return config_lib.assemble(
      arg, model=model_config(), masking=masking_config(), loss=loss_config(), presets=PRESETS
  )


# Per preset, what differs from the values above (the shared train schedule per preset is
# config_lib.COMMON_PRESETS). demo keeps the full model.
PRESETS = {
    # cpu: xMAE's cpu sizes (configs/xmae.py) for the same 2-core budget; depths kept. The
    # augmentation-positive term (A9, weight 0.01) is off: its second view doubles the encoder
    # work per step, which would put 2,000 steps past 30 minutes on this machine.
    "cpu": {
        "model.d_model": 128,
        "model.num_heads": 4,
        "model.stem_channels": 16,
        "model.stem_widths": (16, 32, 64),
        "model.latent_dim": 128,
        "loss.w_augment": 0.0,
    },
    # Scaling (about 100M, 300M, 1B parameters; config_lib.COMMON_PRESETS: bfloat16, FSDP rules).
    "100m": {
        "model.d_model": 768,
        "model.num_heads": 12,
        "model.depth_ecg": 4,
        "model.depth_ppg": 4,
        "model.depth_shared": 3,
        "model.depth_decoder": 2,
        "model.stem_channels": 64,
        "model.stem_widths": (64, 128, 256),
        "model.latent_dim": 512,
    },
    "300m": {
        "model.d_model": 1024,
        "model.num_heads": 16,
        "model.depth_ecg": 8,
        "model.depth_ppg": 8,
        "model.depth_shared": 6,
        "model.depth_decoder": 2,
        "model.stem_channels": 64,
        "model.stem_widths": (64, 128, 256),
        "model.latent_dim": 512,
    },
    "1b": {
        "model.d_model": 2048,
        "model.num_heads": 16,
        "model.depth_ecg": 6,
        "model.depth_ppg": 6,
        "model.depth_shared": 6,
        "model.depth_decoder": 2,
        "model.stem_channels": 128,
        "model.stem_widths": (128, 256, 512),
        "model.latent_dim": 1024,
    },
    "tiny": {
        "model.d_model": 32,
        "model.num_heads": 4,
        "model.depth_ecg": 1,
        "model.depth_ppg": 1,
        "model.depth_shared": 1,
        "model.depth_decoder": 1,
        "model.stem_channels": 8,
        "model.stem_widths": (8, 16, 16),
        "model.latent_dim": 32,
    },
}
