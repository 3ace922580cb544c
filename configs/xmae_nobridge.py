"""xMAE without the cross-attention bridge: the "PPG encoder without the cross-modal constraint".

The xMAE model and configuration (configs/xmae.py) with `model.use_cross_bridge=False`. The
reference then decodes the visible ECG tokens MAE-style through the ECG path's own decoder
(mask token + positions, light decoder block, transposed-convolution head), so ECG and PPG no
longer meet anywhere.

Departure from the reference, on purpose: in the reference's no-bridge mode the PPG encoder
receives no gradient at all (its only training signal is the bridge's key/value path), so the
"baseline" would be a randomly initialized PPG encoder. Here the PPG path gets its own objective:
PPG is masked as ECG is (anchor, ratio 0.8) and its masked samples are reconstructed through the
PPG path's own decoder with weight `loss.w_ppg=1.0`. The two paths are then two independent
MAEs trained side by side; the PPG one is the PPG-MAE baseline's objective (configs/ppg_mae.py)
with xMAE's parameter layout. `masking.ratio_ppg=0.0,loss.w_ppg=0.0` restores the reference's
behaviour (untrained PPG encoder) as a control.
"""

from pathlib import Path

from xmae_jax import config_lib


def get_config(arg=None):
  preset, extra = config_lib.parse_arg(arg)
  c = config_lib.load(f"{Path(__file__).with_name('xmae.py')}:{preset}")
  c.model.use_cross_bridge = False
  c.masking.ratio_ppg = 0.8  # PPG masked as ECG is, so it has something to reconstruct
  c.loss.w_ppg = 1.0  # ... through the PPG path's own decoder
  return config_lib.apply_overrides(config_lib.apply_preset(c, preset, PRESETS), extra)


# The model and schedule follow configs/xmae.py's preset; nothing else differs per preset.
PRESETS = {}
