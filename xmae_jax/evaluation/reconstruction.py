"""Cross-modal reconstruction report: ECG reconstructed from PPG (and PPG from ECG), held out.

Two kinds of model, on paired segments they never trained on (a prepared dataset's test split =
simulator subjects held out by the subject split; real WFDB records such as PhysioNet's):

  * the xMAE call contract (`model(ppg, ecg, ecg_keep)` -> `ecg_reconstruction`; xMAE, and its
    no-bridge variant as the ECG-only control): one direction, `ecg<-ppg`, masked ECG
    reconstructed from the PPG plus the visible ECG, scored on the masked samples;
  * the both-way contract (`model.reconstruct(ppg=..., ecg=..., target=...)`, M2AE): the whole
    target waveform decoded from the other modality alone, both directions, `ecg<-ppg` (R-peak
    timing) and `ppg<-ecg` (pulse-foot timing), scored on every sample (there is no mask: the
    target modality is not an input at all).

Metrics per direction:

  * masks: the model's own masking (mode and ratio from its config, anchor 0.8 for xMAE), drawn
    from a fixed seed, identical for every model and control;
  * correlation: Pearson r between true and reconstructed ECG over the masked samples of each
    segment (median, IQR and mean over segments);
  * R-peak timing: R-peaks found by the preprocessing's finder (`preprocess.find_rpeaks`,
    NeuroKit2's `ecg_peaks` with its default "neurokit" method) in the true and in the
    reconstructed ECG (the whole 10 s, so beats at the mask's edge are found), the true beats
    inside the masked part matched one-to-one to the nearest reconstructed peak within
    `tolerance_ms`; reported: median |error| (ms) of matched beats, the share of true masked
    beats with a reconstructed peak within 50 ms (unmatched beats count as misses),
    sensitivity, and reconstructed peaks in the masked part that match no true beat;
  * pulse-foot timing (`ppg<-ecg`): systolic peaks found by `preprocess.find_pulse_peaks`
    (NeuroKit2's `ppg_peaks`, method "elgendi", the method the PPG is cleaned with), and each
    pulse's foot taken as the minimum of the signal between the previous systolic peak and this
    one (for the first peak, within one median inter-peak interval before it); a minimum on the
    search window's left edge is not a trough (the signal is still falling there) and gives no
    foot. The minimum rather than the intersecting-tangent foot: it is a sample of the signal,
    defined for any pulse shape, and needs no slope estimate on a reconstruction whose upstroke
    may be smoothed. Feet are matched and summarized exactly as R-peaks (same one-to-one
    matching, tolerance, sensitivity, median |error|, share within 50 ms, extra feet; the
    report's `true_beats` / `extra_peaks` count feet in these rows);
  * control: the same with each segment's conditioning modality (PPG for `ecg<-ppg`, ECG for
    `ppg<-ecg`) replaced by another segment's (rolled by half the set, so mostly another
    subject): if that modality drives the reconstruction, timing must collapse.
Raw records are windowed as the model's training data were, PPG shift included
(`recon_windows`). Example figures show true vs reconstructed target, the masked part shaded
(xMAE family), the detected R-peaks or pulse feet marked; one figure per model, data and
direction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from xmae_jax import paths
from xmae_jax import progress
from xmae_jax.data import preprocess
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import contract as contract_lib
from xmae_jax.evaluation import recon_metrics
from xmae_jax.evaluation import recon_windows
from xmae_jax.evaluation import report as report_lib
from xmae_jax.training import figures


class ReconstructionError(XmaeError):
  """A model that does not reconstruct ECG, or data without paired ECG and PPG."""


@dataclasses.dataclass(frozen=True)
class Direction:
  """One reconstruction direction: `target` reconstructed from `source`; `marker` names the
  timing landmark (recon_metrics.DETECTORS[target]) in figure legends."""

  target: str
  source: str
  marker: str


ECG_FROM_PPG, PPG_FROM_ECG = "ecg<-ppg", "ppg<-ecg"
DIRECTIONS = {
    ECG_FROM_PPG: Direction("ecg", "ppg", "R"),
    PPG_FROM_ECG: Direction("ppg", "ecg", "foot"),
}


# ----------------------------------------------------------------------------------------------
# Running a model


CEILING_BEAT_S = 0.3  # half-width of the mean beat the timing ceiling places
CEILING_MAX_DELAY_S = 1.0  # an R-peak's systolic peak is the next one within this


def timing_ceiling(ppg: np.ndarray, ecg: np.ndarray, fs: float) -> dict[str, Any]:
  """What beat timing read off the PPG could explain of the ECG, in the masked-ECG loss's units
  (mean squared error of the min-max-normalized samples), on paired windows (N, L):

    mse_window_mean       each window's own mean: a reconstruction that learned nothing
    mse_ppg_timing        one population mean beat (no morphology of this window) centred at
                          every PPG systolic peak minus the median R-to-systolic-peak delay,
                          blurred by the spread of that delay: what PPG timing alone gives a
                          model that has to guess the beat's shape
    mse_r_peaks_own_beat  the window's own mean beat at its true R-peaks: timing and shape both
                          known, a floor for a reconstruction built from these landmarks
  Every prediction is shifted to the window's mean. The population beat and delay spread are
  estimated on the same windows (a ceiling, not a held-out predictor).
  """
  ecg, ppg = np.asarray(ecg, np.float64), np.asarray(ppg, np.float64)
  half, max_delay = int(round(CEILING_BEAT_S * fs)), int(round(CEILING_MAX_DELAY_S * fs))
  n = ecg.shape[1]
  landmarks, beats, delays = [], [], []
  for e, p in zip(ecg, ppg):
    r, s = preprocess.find_rpeaks(e, fs), preprocess.find_pulse_peaks(p, fs)
    inner = r[(r >= half) & (r < n - half)]
    own = [e[t - half : t + half] - np.median(e) for t in inner]  # beats above the baseline
    beats.extend(own)
    delays.extend(preprocess.next_pulse_delays(r, s, max_delay))
    landmarks.append((inner, np.mean(own, axis=0) if own else None, s))
  if not beats or not delays:
    raise ReconstructionError("timing ceiling: no R-peak with a following PPG systolic peak")
  beat = np.mean(beats, axis=0)
  delays = np.asarray(delays, int)
  lag = int(np.median(delays))
  spread = np.bincount(np.clip(delays - lag, -half, half) + half, minlength=2 * half + 1)
  blurred = np.convolve(beat, spread[::-1] / spread.sum())  # centre at 2 * half

  def placed(centres, shape, centre):
    out = np.zeros(n)
    for t in np.asarray(centres, int):
      a, b = max(0, t - centre), min(n, t - centre + len(shape))
      if a < b:
        out[a:b] += shape[a - t + centre : b - t + centre]
    return out

  mse = {"mse_window_mean": [], "mse_ppg_timing": [], "mse_r_peaks_own_beat": []}
  for e, (inner, own, s) in zip(ecg, landmarks):
    for key, pred in (
        ("mse_window_mean", np.zeros(n)),
        ("mse_ppg_timing", placed(s - lag, blurred, 2 * half)),
        ("mse_r_peaks_own_beat", placed(inner, own, half) if own is not None else np.zeros(n)),
    ):
      mse[key].append(np.mean((e - e.mean() - (pred - pred.mean())) ** 2))
  return {
      "windows": len(ecg),
      "beats": len(beats),
      **{k: float(np.mean(v)) for k, v in mse.items()},
      "delay_ms_median": 1000.0 * lag / fs,
      "delay_ms_iqr": [float(1000.0 * q / fs) for q in np.percentile(delays, [25, 75])],
  }


def has_masked_contract(model) -> bool:
  """The xMAE call contract: own masks (`sample_masks`) and `model(ppg, ecg, ecg_keep)`."""
  return hasattr(model, "sample_masks") and callable(model)


def has_both_way_contract(model) -> bool:
  """M2AE's contract: `model.reconstruct(ppg=..., ecg=..., target=...)` -> whole waveform."""
  return callable(getattr(model, "reconstruct", None))


def model_directions(model) -> tuple[str, ...]:
  """The directions the report scores for `model` (module docstring)."""
  if has_masked_contract(model):
    return (ECG_FROM_PPG,)
  if has_both_way_contract(model):
    return tuple(DIRECTIONS)
  raise ReconstructionError(
      f"{type(model).__name__} does not reconstruct ECG (needs the xMAE "
      "call contract model(ppg, ecg, ecg_keep) or M2AE's "
      "model.reconstruct(ppg=..., ecg=..., target=...))"
  )


def _in_batches(run, arrays: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
  """`run(batch_index, *batch)` over rows of `arrays`, the last batch zero-padded to
  `batch_size` (one compiled shape); each output concatenated over batches, padding dropped."""
  outs = []
  n = len(arrays[0])
  for start in range(0, n, batch_size):
    parts = [a[start : start + batch_size] for a in arrays]
    pad = batch_size - len(parts[0])
    if pad:
      parts = [np.concatenate([p, np.zeros((pad,) + p.shape[1:], np.float32)]) for p in parts]
    got = run(start // batch_size, *parts)
    outs.append([np.asarray(g)[: batch_size - pad] for g in got])
  return [np.concatenate(col) for col in zip(*outs)]


def reconstruct(
    model,
    ppg: np.ndarray,
    ecg: np.ndarray,
    *,
    seed: int = 0,
    batch_size: int = 64,
    mask_ratio: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """(reconstructed ECG (N, L), masked (N, L) bool) with masks drawn from `seed`.

  The masks depend only on the seed, the segment's position and the model's masking config,
  so two models with the same masking see identical masks.
  """
  # JAX only to run a model: the metrics and the report are computed without it.
  import jax
  from flax import nnx

  if not has_masked_contract(model):
    raise ReconstructionError(
        f"{type(model).__name__} does not reconstruct ECG "
        "(needs the xMAE call contract model(ppg, ecg, ecg_keep))"
    )
  model.eval()
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, ppg, ecg, key):
    m = nnx.merge(graphdef, state)
    keep, _ = m.sample_masks(key, ppg.shape[0], mask_ratio=mask_ratio)
    out = m(ppg, ecg, keep)
    return out["ecg_reconstruction"], out["ecg_mask"]

  base = jax.random.key(seed)
  rec, mask = _in_batches(
      lambda i, p, e: run(state, p, e, jax.random.fold_in(base, i)), (ppg, ecg), batch_size
  )
  return rec, mask > 0.5


def whole_reconstructor(model, *, direction: str, batch_size: int = 64):
  """A function (N, L) source-modality windows -> the whole target waveforms (N, L) decoded
  from the source alone, through `model.reconstruct` (the both-way contract); `direction` is a
  key of DIRECTIONS. Compiled once, for the paired windows and their control alike."""
  # JAX only to run a model: the metrics and the report are computed without it.
  import jax
  from flax import nnx

  if not has_both_way_contract(model):
    raise ReconstructionError(
        f"{type(model).__name__} does not reconstruct one modality from "
        "the other alone (needs model.reconstruct(ppg=..., ecg=..., "
        "target=...))"
    )
  d = DIRECTIONS[direction]
  model.eval()
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x):
    return nnx.merge(graphdef, state).reconstruct(**{d.source: x}, target=d.target)

  return lambda x: _in_batches(lambda _, b: (run(state, b),), (x,), batch_size)[0]


def evaluate(
    model,
    config,
    ppg: np.ndarray,
    ecg: np.ndarray,
    *,
    fs: float = 100.0,
    seed: int = 0,
    tolerance_ms: float = 150.0,
    control: bool = True,
    figure: str | None = None,
    title: str = "",
    direction: str = ECG_FROM_PPG,
    groups=None,
) -> dict[str, Any]:
  """Reconstruction metrics on paired segments in one `direction` (a key of DIRECTIONS), plus
  the control with the conditioning modality shuffled (`shuffled_{source}_control`) and, given
  each segment's subject in `groups`, their paired difference
  (`recon_metrics.paired_beat_difference`).
  """
  if len(ppg) == 0:
    raise ReconstructionError("no paired segments to reconstruct")
  if direction not in model_directions(model):
    raise ReconstructionError(
        f"{type(model).__name__} has no {direction} reconstruction "
        f"(it has {', '.join(model_directions(model))})"
    )
  d = DIRECTIONS[direction]
  signals = {"ppg": ppg, "ecg": ecg}
  true, cond = signals[d.target], signals[d.source]
  masked_model = has_masked_contract(model)
  whole = None if masked_model else whole_reconstructor(model, direction=direction)

  def run(source_signal):
    if masked_model:
      return reconstruct(model, source_signal, ecg, seed=seed)
    return whole(source_signal), np.ones(true.shape, bool)

  detect = recon_metrics.DETECTORS[d.target]
  recon, masked = run(cond)
  summary, peaks = recon_metrics.summarize(
      true, recon, masked, fs, tolerance_ms=tolerance_ms, detect=detect, per_row=True
  )
  rows = summary.pop("per_row")
  out = {
      "model": str(config.model.name),
      "direction": direction,
      "scored_samples": "masked" if masked_model else "all",
      "reconstruction": summary,
  }
  if control and len(ppg) > 1:
    other = np.roll(cond, len(cond) // 2, axis=0)
    recon_c, masked_c = run(other)
    assert np.array_equal(masked, masked_c)
    control_summary = recon_metrics.summarize(
        true, recon_c, masked_c, fs, tolerance_ms=tolerance_ms, detect=detect, per_row=True
    )[0]
    rows_c = control_summary.pop("per_row")
    out[f"shuffled_{d.source}_control"] = control_summary
    if groups is not None:
      out["paired_minus_control"] = recon_metrics.paired_beat_difference(
          rows, rows_c, groups, seed=seed
      )
  if figure:
    order = np.argsort(
        -np.nan_to_num(recon_metrics.masked_correlation(true, recon, masked), nan=-2)
    )
    # Examples spread over the quality range: best, two middle, worst.
    pick = order[np.unique(np.linspace(0, len(order) - 1, min(4, len(order))).astype(int))]
    shaded = masked[pick] if masked_model else np.zeros_like(masked[pick])
    xlabel = (
        "time (s); shaded = masked ECG"
        if masked_model
        else f"time (s); whole {d.target.upper()} decoded from the {d.source.upper()} alone"
    )
    figures.plot_reconstructions(
        figure,
        true[pick],
        recon[pick],
        shaded,
        cond[pick],
        sampling_rate=fs,
        title=title,
        peaks=[peaks[i] for i in pick],
        xlabel=xlabel,
        target=d.target.upper(),
        source=d.source.upper(),
        event=d.marker,
    )
    out["figure"] = str(figure)
  return out


# ----------------------------------------------------------------------------------------------
# Report over sources


def build_report(
    models: Sequence[tuple[str, str]],
    data_sources: Sequence[tuple[str, str]],
    out_dir,
    *,
    split: str = "test",
    step: str = "auto",
    seed: int = 0,
    min_quality: float | None = None,
    tolerance_ms: float = 150.0,
    with_ceiling: bool = False,
) -> dict:
  """models: (name, workdir); data_sources: (label, path). Writes OUT/reconstruction.{json,md}
  and OUT/figures/NAME_LABEL.png (both-way models: NAME_LABEL_ecg_from_ppg.png and
  NAME_LABEL_ppg_from_ecg.png); returns the report dict, one row per model, data and direction,
  and with `with_ceiling` each data source's `timing_ceiling` under 'ceilings'. Raw records are
  read for each model with the PPG shift its training data had (`recon_windows`); a row's
  `notes["ppg_alignment"]` says which."""
  # Orbax takes a while to import (it is in training.checkpoint); only loading needs it, not --help.
  from xmae_jax.training import model_checkpoint

  if not data_sources:
    raise ReconstructionError("give --data and/or --wfdb")
  out = paths.path(out_dir)
  rows = []
  loaded = []
  for name, workdir in models:
    model, config = model_checkpoint.load_model(workdir, step=step)
    try:  # a model that reconstructs nothing fails before any data
      model_directions(model)
    except ReconstructionError as e:
      raise ReconstructionError(f"--model {name}={workdir}: {e}") from None
    loaded.append((name, model, config))
  if not loaded:
    raise ReconstructionError("no --model given")
  contract = contract_lib.Contract.from_config(loaded[0][2])
  alignments = [recon_windows.model_alignment(config) for _, _, config in loaded]
  ceilings = []
  bar = progress.bar(
      total=len(data_sources) * sum(len(model_directions(m)) for _, m, _ in loaded),
      desc="reconstructing",
      unit="run",
  )
  for label, path in data_sources:
    windows = recon_windows.per_model(
        path, alignments, contract=contract, split=split, min_quality=min_quality
    )
    if with_ceiling:
      ppg, ecg = windows[0][:2]
      ceilings.append({"data": label, **timing_ceiling(ppg, ecg, contract.sampling_rate)})
    for (name, model, config), (ppg, ecg, subjects, notes) in zip(loaded, windows):
      directions = model_directions(model)
      for direction in directions:
        d = DIRECTIONS[direction]
        # One direction (xMAE family): the figure keeps its name; both ways: one per direction.
        suffix = "" if len(directions) == 1 else f"_{d.target}_from_{d.source}"
        fig = out / "figures" / f"{name}_{slug(label)}{suffix}.png"
        title = (
            f"{name} on {label}: masked ECG reconstructed (shaded = masked)"
            if has_masked_contract(model)
            else f"{name} on {label}: whole {d.target.upper()} from the {d.source.upper()} alone"
        )
        r = evaluate(
            model,
            config,
            ppg,
            ecg,
            fs=contract.sampling_rate,
            seed=seed,
            tolerance_ms=tolerance_ms,
            figure=str(fig),
            title=title,
            direction=direction,
            groups=subjects,
        )
        rows.append({"name": name, "data": label, "path": str(path), "notes": notes, **r})
        bar.update(1)
  bar.close()
  report = {
      "seed": seed,
      "fs": contract.sampling_rate,
      "tolerance_ms": tolerance_ms,
      "split": split,
      "min_quality": min_quality,
      "rows": rows,
  }
  if with_ceiling:
    report["ceilings"] = ceilings
  report_lib.write_reconstruction(report, out)
  return report


def slug(text: str) -> str:
  """`text` with every character that is not a letter or digit replaced by `_` (file names)."""
  return "".join(c if c.isalnum() else "_" for c in text).strip("_")
