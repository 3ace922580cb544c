"""Synthetic paired ECG + PPG from a physiological simulator: the embedded default dataset.

Per subject (all drawn from `seed` and the subject index, so the same seed gives the same data):
  * metadata: age, sex, BMI, systolic/diastolic blood pressure, resting heart rate;
  * ECG: beats rendered from a NeuroKit2 ECGSYN template (McSharry's dynamical model; one of
    four QRS shapes, P and T amplitudes per subject), QT stretched with the RR interval
    (Bazett), respiratory sinus arrhythmia and Mayer waves in the RR series, optional premature
    ventricular contractions (early, wide bizarre QRS without P wave, discordant T, compensatory
    pause);
  * PPG: one pulse per R peak, starting after the pulse transit time (PTT). PTT is shorter with
    age and with blood pressure, beat by beat (BP varies with Mayer waves and respiration). The
    pulse is a forward wave plus a reflected wave that arrives earlier and larger with age and BP
    (arterial stiffness), plus diastolic run-off. A PVC's pulse is small (short filling time),
    the next one potentiated;
  * baseline wander, sensor noise, powerline interference and motion-like artefacts.
Output is raw signals at `--raw-fs` (default 125 Hz, PulseDB's rate) that then go through the
same cleaning, quality, resampling and windowing as real recordings. Windows carry labels
`pvc` and `motion` (0/1) and meta age, sex, bmi, sbp, dbp, hr, ptt_ms.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from typing import Any, Iterator

import numpy as np

from xmae_jax.data.sources import Recording
from xmae_jax.data.sources import SourceError
from xmae_jax.data.sources import add_option_arguments
from xmae_jax.data.sources import option
from xmae_jax.data.sources import options_of

DESCRIPTION = "paired ECG+PPG from a physiological simulator (no --input needed)"
USES_SEED = True  # the data themselves depend on --seed
TEMPLATE_FS = 500.0
ECG_PRE, ECG_POST = 0.40, 0.60  # template span around the R peak (s) at RR = 1 s
PULSE_SPAN = 1.2  # s of one PPG pulse after its foot


@dataclasses.dataclass(frozen=True)
class Options:
  num_subjects: int = option(20)
  minutes_per_subject: float = option(2.0)
  raw_fs: float = option(125.0, "rate the simulator renders at, before the real preprocessing")
  pvc_subjects: float = option(0.3, "fraction of subjects with ectopic (PVC) beats")
  pvc_rate: float = option(0.08, "per-beat PVC probability for those subjects")
  artifact_rate: float = option(0.5, "mean motion artefacts per minute")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  add_option_arguments(parser, "synthetic", Options)


def list_inputs(path: str | None, options: dict[str, Any]) -> list[str]:
  opts = options_of(Options, options)
  n, minutes = int(opts.num_subjects), float(opts.minutes_per_subject)
  if n < 1 or minutes <= 0:
    raise SourceError("empty input", "--num-subjects and --minutes-per-subject must be positive")
  return [subject_name(i) for i in range(n)]


def planned_size(path: str | None, options: dict[str, Any]) -> dict[str, Any]:
  """The request's size before any subject is listed (xmae-prepare checks it up front)."""
  opts = options_of(Options, options)
  n, minutes = int(opts.num_subjects), float(opts.minutes_per_subject)
  for flag, value in (("--minutes-per-subject", minutes), ("--raw-fs", float(opts.raw_fs))):
    if not math.isfinite(value):
      raise SourceError("bad option", f"{flag} {value} is not a finite number")
  return {
      "units": max(n, 0),
      "seconds_per_unit": max(minutes, 0.0) * 60.0,
      "raw_fs": float(opts.raw_fs),
      "what": f"--num-subjects {n} x --minutes-per-subject {minutes:g}",
  }


def subject_name(index: int) -> str:
  return f"syn{index:05d}"


def read(unit: str, options: dict[str, Any]) -> Iterator[Recording]:
  index = int(unit[3:])
  opts = options_of(Options, options)
  yield simulate_subject(
      int(options.get("seed", 0)),
      index,
      minutes=float(opts.minutes_per_subject),
      fs=float(opts.raw_fs),
      pvc_subjects=float(opts.pvc_subjects),
      pvc_rate=float(opts.pvc_rate),
      artifact_rate=float(opts.artifact_rate),
  )


# ---------------------------------------------------------------------------------------------
# Subject parameters
# ---------------------------------------------------------------------------------------------
def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(stream)]))


def subject_params(
    seed: int, index: int, pvc_subjects: float = 0.3, pvc_rate: float = 0.08
) -> dict[str, float]:
  """Demographics and the physiology they imply (deterministic in seed and index)."""
  r = _rng(seed, index, 0)
  age = float(r.uniform(20, 85))
  sex = float(r.integers(0, 2))  # 0 female, 1 male
  bmi = float(np.clip(r.normal(26, 4), 17, 42))
  sbp = float(
      np.clip(100 + 0.55 * (age - 20) + 0.9 * (bmi - 25) + 5 * sex + r.normal(0, 9), 88, 190)
  )
  dbp = float(np.clip(0.45 * sbp + 18 + 0.15 * (bmi - 25) + r.normal(0, 5), 48, sbp - 25))
  hr = float(np.clip(74 - 0.12 * (age - 50) + 0.6 * (bmi - 25) - 3 * sex + r.normal(0, 8), 48, 110))
  # Pulse transit time (R peak -> pulse foot): stiffer, faster-conducting arteries with age
  # and pressure shorten it (Moens-Korteweg).
  ptt = float(np.clip(310 - 1.5 * (age - 20) - 1.2 * (sbp - 120) + r.normal(0, 10), 120, 420))
  # Reflected wave: earlier and larger with age and pressure (augmentation).
  refl_delay = float(np.clip(0.30 - 0.0028 * (age - 20) - 0.0008 * (sbp - 120), 0.10, 0.34))
  refl_amp = float(np.clip(0.30 + 0.007 * (age - 20) + 0.002 * (sbp - 120), 0.2, 0.85))
  rise = float(np.clip(0.045 + 0.0003 * (age - 20) + r.normal(0, 0.004), 0.035, 0.075))
  has_pvc = bool(r.uniform() < pvc_subjects)
  return {
      "age": age,
      "sex": sex,
      "bmi": bmi,
      "sbp": sbp,
      "dbp": dbp,
      "hr": hr,
      "ptt_ms": ptt,
      "refl_delay": refl_delay,
      "refl_amp": refl_amp,
      "rise": rise,
      "pvc_rate": pvc_rate if has_pvc else 0.0,
      "resp_hz": float(r.uniform(0.18, 0.33)),
      "ecg_gain": float(r.uniform(0.6, 1.6)),
      "ecg_noise": float(r.uniform(0.005, 0.03)),
      "ppg_noise": float(r.uniform(0.005, 0.03)),
      "pvc_polarity": float(r.choice([-1.0, 1.0])),
      "p_amp": float(r.uniform(0.8, 1.6)),
      "t_amp": float(r.uniform(0.5, 1.1)),
      "qrs_variant": float(r.integers(0, len(QRS_VARIANTS))),
  }


def pulse_shape(tau: np.ndarray, p: dict[str, float]) -> np.ndarray:
  """PPG pulse vs time since its foot (s): forward + reflected Gaussian waves + run-off."""
  mu = 2.6 * p["rise"]
  fwd = np.exp(-0.5 * ((tau - mu) / p["rise"]) ** 2)
  refl = p["refl_amp"] * np.exp(-0.5 * ((tau - mu - p["refl_delay"]) / 0.09) ** 2)
  runoff = 0.25 * np.exp(-np.clip(tau - mu, 0, None) / 0.3) / (1 + np.exp(-(tau - mu) / 0.03))
  taper = np.clip((PULSE_SPAN - tau) / 0.3, 0, 1)  # fade out before the span ends
  return np.where(tau >= 0, (fwd + refl + runoff) * taper, 0.0)


def pulse_peak_offset(p: dict[str, float]) -> float:
  """Seconds from pulse foot to the systolic peak of `pulse_shape` (used by tests)."""
  tau = np.arange(0, 0.6, 1e-4)
  return float(tau[np.argmax(pulse_shape(tau, p))])


# QRS variants (Q and S depths of ECGSYN's P, Q, R, S, T Gaussians): ECGSYN integrates an ODE,
# too slow to run per subject, so each process builds these few once and subjects scale P and T.
QRS_VARIANTS = ((-5.0, -7.5), (-3.0, -10.0), (-7.0, -5.0), (-2.0, -4.0))


@functools.lru_cache(maxsize=len(QRS_VARIANTS))
def _ecg_template(variant: int) -> tuple[np.ndarray, np.ndarray]:
  """(time grid, one averaged ECGSYN beat at 60 bpm, zero at both ends, R peak = 1)."""
  # NeuroKit2 takes a while to import; only building a template needs it.
  import neurokit2 as nk
  from scipy import signal as sps

  q, s = QRS_VARIANTS[variant]
  x = np.asarray(
      nk.ecg_simulate(
          duration=8,
          sampling_rate=int(TEMPLATE_FS),
          heart_rate=60,
          heart_rate_std=0.0001,
          noise=0,
          method="ecgsyn",
          random_state=variant,
          ai=(1.2, q, 30, s, 0.75),
      ),
      float,
  )
  peaks, _ = sps.find_peaks(x, distance=int(0.5 * TEMPLATE_FS), height=0.5 * x.max())
  pre, post = int(ECG_PRE * TEMPLATE_FS), int(ECG_POST * TEMPLATE_FS)
  beats = [x[k - pre : k + post] for k in peaks if k - pre >= 0 and k + post <= len(x)]
  beat = np.median(np.stack(beats), axis=0)
  beat = beat - np.linspace(beat[0], beat[-1], len(beat))  # ends at 0 for overlap-add
  beat = beat / (beat[pre] if beat[pre] > 0 else 1.0)
  grid = (np.arange(len(beat)) - pre) / TEMPLATE_FS
  return grid, beat


def subject_template(p: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
  """The subject's beat: a QRS variant with its own P- and T-wave amplitudes."""
  grid, beat = _ecg_template(int(p["qrs_variant"]))
  p_region = np.clip((-0.06 - grid) / 0.02, 0, 1)  # before the QRS
  t_region = np.clip((grid - 0.10) / 0.03, 0, 1)  # after the QRS
  scale = 1 + (p["p_amp"] - 1) * p_region + (p["t_amp"] - 1) * t_region
  return grid, beat * scale


def _pvc_beat(tau: np.ndarray, polarity: float) -> np.ndarray:
  """A wide (~180 ms) bizarre QRS without P wave and a discordant T wave; R amplitude 1.5."""
  g = lambda mu, s: np.exp(-0.5 * ((tau - mu) / s) ** 2)
  return polarity * (1.6 * g(0.0, 0.045) - 0.6 * g(0.09, 0.04) - 0.35 * g(0.33, 0.08))


# ---------------------------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------------------------
def _beats(p: dict[str, float], duration: float, r: np.random.Generator):
  """R-peak times, PVC flags and per-beat SBP/DBP/PTT over `duration` seconds."""
  phase_m, phase_r = r.uniform(0, 2 * np.pi, 2)
  rr0 = 60.0 / p["hr"]
  times, pvc = [], []
  t = float(r.uniform(0.2, 0.2 + rr0))
  prev_pvc = False
  while t < duration + 1.0:
    times.append(t)
    rr = rr0 * (
        1
        + 0.04 * math.sin(2 * np.pi * p["resp_hz"] * t + phase_r)
        + 0.03 * math.sin(2 * np.pi * 0.1 * t + phase_m)
        + r.normal(0, 0.015)
    )
    if not prev_pvc and r.uniform() < p["pvc_rate"]:
      # the next beat comes early (coupling 60%) and the one after pauses (compensatory)
      early = 0.6 * rr
      pvc.append(False)
      times.append(t + early)
      pvc.append(True)
      t = t + 2 * rr
      prev_pvc = True
      continue
    pvc.append(False)
    prev_pvc = False
    t += rr
  times = np.asarray(times)
  pvc = np.asarray(pvc, bool)
  drift = np.cumsum(r.normal(0, 0.3, len(times)))
  drift -= np.linspace(0, drift[-1], len(times))  # bounded slow BP drift
  sbp = (
      p["sbp"]
      + 4 * np.sin(2 * np.pi * 0.1 * times + phase_m)
      + 2 * np.sin(2 * np.pi * p["resp_hz"] * times + phase_r)
      + drift
  )
  dbp = p["dbp"] + 0.6 * (sbp - p["sbp"])
  ptt = p["ptt_ms"] - 1.2 * (sbp - p["sbp"]) + r.normal(0, 3, len(times))
  return times, pvc, sbp, dbp, ptt


def _render_ecg(n, fs, times, pvc, p):
  grid, beat = subject_template(p)
  ecg = np.zeros(n)
  rr_prev = np.diff(times, prepend=times[0] - 60.0 / p["hr"])
  for t, is_pvc, rr in zip(times, pvc, rr_prev):
    stretch = math.sqrt(max(rr, 0.3))  # Bazett: QT ~ sqrt(RR)
    a = max(int(math.ceil((t - ECG_PRE) * fs)), 0)
    b = min(int(math.floor((t + ECG_POST * stretch + 0.2) * fs)) + 1, n)
    if a >= b:
      continue
    tau = np.arange(a, b) / fs - t
    if is_pvc:
      ecg[a:b] += _pvc_beat(tau, p["pvc_polarity"])
    else:
      warped = np.where(tau < 0.04, tau, 0.04 + (tau - 0.04) / stretch)
      ecg[a:b] += np.interp(warped, grid, beat, left=0.0, right=0.0)
  return ecg * p["ecg_gain"]


def _render_ppg(n, fs, times, pvc, ptt, p, resp_phase):
  ppg = np.zeros(n)
  after_pvc = np.roll(pvc, 1)
  after_pvc[0] = False
  for t, is_pvc, post, d in zip(times, pvc, after_pvc, ptt):
    foot = t + d / 1000.0
    a = max(int(math.ceil(foot * fs)), 0)
    b = min(int(math.floor((foot + PULSE_SPAN) * fs)) + 1, n)
    if a >= b:
      continue
    amp = 1 + 0.1 * math.sin(2 * np.pi * p["resp_hz"] * t + resp_phase)
    amp *= 0.2 if is_pvc else (1.25 if post else 1.0)
    ppg[a:b] += amp * pulse_shape(np.arange(a, b) / fs - foot, p)
  return ppg


def _smooth_noise(r, n, fs, cutoff_hz):
  """Gaussian noise low-passed (moving average) to roughly `cutoff_hz`, unit std."""
  k = max(int(fs / cutoff_hz), 1)
  x = np.convolve(r.normal(size=n + k), np.ones(k) / k, mode="valid")[:n]
  return x / (x.std() + 1e-12)


def simulate_subject(
    seed: int,
    index: int,
    *,
    minutes: float = 2.0,
    fs: float = 125.0,
    pvc_subjects: float = 0.3,
    pvc_rate: float = 0.08,
    artifact_rate: float = 0.5,
) -> Recording:
  p = subject_params(seed, index, pvc_subjects, pvc_rate)
  r = _rng(seed, index, 1)
  duration = minutes * 60.0
  n = int(round(duration * fs))
  t = np.arange(n) / fs
  times, pvc, sbp, dbp, ptt = _beats(p, duration, r)
  resp_phase = float(r.uniform(0, 2 * np.pi))
  ecg = _render_ecg(n, fs, times, pvc, p)
  ppg = _render_ppg(n, fs, times, pvc, ptt, p, resp_phase)
  resp = np.sin(2 * np.pi * p["resp_hz"] * t + resp_phase)
  # baseline wander (respiration + slow drift), sensor noise, powerline
  ecg += 0.08 * resp + 0.05 * _smooth_noise(r, n, fs, 0.05)
  ecg += p["ecg_noise"] * r.normal(size=n) + 0.01 * np.sin(2 * np.pi * 50.0 * t)
  ppg += 0.15 * resp + 0.2 * _smooth_noise(r, n, fs, 0.03) + p["ppg_noise"] * r.normal(size=n)
  # motion-like artefacts: bursts of large low-frequency movement, weaker on the ECG
  k = r.poisson(artifact_rate * minutes)
  motion = []
  for _ in range(k):
    start = float(r.uniform(0, duration))
    length = float(r.uniform(1.0, 4.0))
    a, b = int(start * fs), min(int((start + length) * fs), n)
    if b - a < 2:
      continue
    burst = _smooth_noise(r, b - a, fs, 3.0) * np.hanning(b - a)
    ppg[a:b] += float(r.uniform(0.8, 3.0)) * burst
    ecg[a:b] += (
        float(r.uniform(0.2, 1.0))
        * p["ecg_gain"]
        * _smooth_noise(r, b - a, fs, 8.0)
        * np.hanning(b - a)
    )
    motion.append((start, start + length))
  ppg = 1.0 + ppg  # a DC level like a real sensor
  name = subject_name(index)
  inside = times < duration
  hr_times, hr = times[1:], 60.0 / np.diff(times)
  return Recording(
      subject_id=name,
      name=name,
      signals={"ecg": (ecg, fs), "ppg": (ppg, fs)},
      meta={"age": round(p["age"], 1), "sex": p["sex"], "bmi": round(p["bmi"], 1)},
      events={
          "pvc": np.stack([times[pvc], times[pvc]], axis=1),
          "motion": np.asarray(motion, float).reshape(-1, 2),
      },
      series={
          "sbp": (times[inside], sbp[inside]),
          "dbp": (times[inside], dbp[inside]),
          "ptt_ms": (times[inside], ptt[inside]),
          "hr": (hr_times[hr_times < duration], hr[hr_times < duration]),
      },
  )
