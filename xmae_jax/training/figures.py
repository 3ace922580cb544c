"""PNG figures of ECG reconstructions: true vs reconstructed, the masked part shaded.

Like the reference's `MaskedReconstruction` plotting callback (hzhou3/xMAE at commit 7a0d24e):
a few segments, each a panel with the PPG it was reconstructed from (faint, offset below), the
true ECG and the reconstruction, and the masked patches shaded. The trainer draws validation
segments with it; the reconstruction report (xmae_jax.evaluation.reconstruction)
draws held-out segments with their detected R-peaks marked. Uses matplotlib's Agg backend (no
display); written to a temporary name and renamed (atomic.atomic_path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from xmae_jax import atomic
from xmae_jax import paths


def masked_runs(mask: np.ndarray) -> list[tuple[int, int]]:
  """[(start, stop), ...] of the True runs of a 1-D boolean array."""
  m = np.concatenate([[False], mask.astype(bool), [False]])
  edges = np.flatnonzero(m[1:] != m[:-1])
  return list(zip(edges[0::2], edges[1::2]))


def plot_reconstructions(
    path,
    ecg: np.ndarray,
    reconstruction: np.ndarray,
    masked: np.ndarray,
    ppg: np.ndarray | None = None,
    *,
    sampling_rate: float = 100.0,
    title: str = "",
    peaks: Sequence[dict] | None = None,
    xlabel: str = "time (s)",
    target: str = "ECG",
    source: str = "PPG",
    event: str = "R",
) -> Path:
  """Writes one PNG with a panel per segment; `masked` is (n, L) True where the ECG was hidden.

  `peaks` (optional, one dict per segment with `true` and `recon` sample indices) marks the
  R-peaks detected in the true and in the reconstructed ECG. `target`, `source` and `event`
  name the reconstructed signal (passed as `ecg`), its input (`ppg`) and the marked landmark in
  the legend, for the other direction (PPG from ECG, pulse feet).
  """
  # matplotlib takes a while to import, and its backend is set before pyplot loads.
  import matplotlib

  matplotlib.use("Agg", force=True)
  # After the backend is set.
  import matplotlib.pyplot as plt

  ecg, reconstruction, masked = (np.asarray(a) for a in (ecg, reconstruction, masked))
  n, length = ecg.shape
  t = np.arange(length) / sampling_rate
  fig, axes = plt.subplots(n, 1, figsize=(10, 1.9 * n), sharex=True, squeeze=False)
  for i, ax in enumerate(axes[:, 0]):
    for k, (start, stop) in enumerate(masked_runs(masked[i])):
      ax.axvspan(
          t[start],
          t[min(stop, length) - 1] + 1 / sampling_rate,
          color="0.85",
          lw=0,
          label="masked" if k == 0 else None,
      )
    if ppg is not None:
      ax.plot(
          t,
          np.asarray(ppg)[i] - 2.4,
          color="tab:green",
          lw=0.7,
          alpha=0.7,
          label=f"{source} (input)",
      )
    ax.plot(t, ecg[i], color="black", lw=0.8, label=f"{target} true")
    ax.plot(
        t, reconstruction[i], color="tab:red", lw=0.8, alpha=0.85, label=f"{target} reconstructed"
    )
    if peaks is not None:
      pt, pr = np.asarray(peaks[i]["true"], int), np.asarray(peaks[i]["recon"], int)
      ax.plot(t[pt], ecg[i][pt] + 0.15, "v", color="black", ms=4, label=f"{event} true")
      ax.plot(
          t[pr], reconstruction[i][pr] + 0.15, "v", color="tab:red", ms=4, label=f"{event} recon"
      )
    ax.set_yticks([])
    if i == 0:
      ax.legend(
          loc="upper right",
          fontsize=6 if peaks is not None else 7,
          ncol=6 if peaks is not None else 4,
          frameon=False,
      )
  axes[-1, 0].set_xlabel(xlabel)
  if title:
    axes[0, 0].set_title(title, fontsize=9)
  return save_figure(fig, path)


def save_figure(fig, path, dpi: int = 90) -> Path:
  """Writes `fig` to `path` atomically (temp file, then rename) and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig.tight_layout()
  try:
    with atomic.atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=dpi)
  finally:
    plt.close(fig)
  return paths.path(path)
