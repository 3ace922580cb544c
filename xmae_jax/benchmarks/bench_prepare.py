"""xmae-prepare benchmark: `python -m xmae_jax.benchmarks prepare --source synthetic|wfdb
[--input DIR] [--records N] [--num-subjects N] [--minutes-per-subject M] [--workers 1,2]
[--reference-repo PATH [--commit 7a0d24e]]`.

Two measurements, one JSON line:

* `runs`: the whole of `prepare_dataset` (read or simulate, clean, quality, resample, window,
  encode, split, write shards) into a fresh temporary directory once per worker count. Wall time
  includes starting the worker processes, as a user sees it; CPU time is this process's and its
  finished workers'.
* `preprocess` (file sources): in this process, one worker, the preprocessing alone on the same
  records, in process CPU time (user + system, so other jobs on a shared machine do not count):
  reading them (`read_cpu_s`), `segment_recording` (ours) and `segment_recording_unbatched` (the
  straightforward per-window path, i.e. ours before the windows of a record were batched), as
  kept segments per CPU-second. With `--reference-repo` (a checkout or bare clone of
  github.com/hzhou3/xMAE, never vendored), the reference's per-segment preprocessing,
  `preprocessing/process.py: process_signal(ppg, ecg)` (NeuroKit cleaning, template-match quality
  of both signals, resampling to 100 Hz, min-max into a float16 frame), runs on the raw window of
  every segment we keep (its FS set to the record's rate; windows whose ECG and PPG rates differ
  are left out, as it takes one rate) and `speedup` = our segments per CPU-second over its.
  Both sides are warmed up on the first recording, then run in `--rounds` alternating rounds;
  each side's best round counts (the slower rounds measure the neighbours).
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from xmae_jax.benchmarks import bench_common as common
from xmae_jax.data import prepare as prep
from xmae_jax.data import prepare_rules
from xmae_jax.data import preprocess as pp
from xmae_jax.data import sources as sources_lib
from xmae_jax.errors import XmaeError

REFERENCE_PREPROCESS_FILE = "preprocessing/process.py"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog="python -m xmae_jax.benchmarks prepare")
  p.add_argument(
      "--source", default="synthetic", choices=["synthetic", "wfdb", "pulsedb", "csv", "npz"]
  )
  p.add_argument("--input", default=None, help="input for file sources")
  p.add_argument(
      "--records",
      type=int,
      default=None,
      help="use the first N inputs of --input (sorted as the reader lists them)",
  )
  p.add_argument("--num-subjects", type=int, default=40)
  p.add_argument("--minutes-per-subject", type=float, default=2.0)
  p.add_argument(
      "--workers",
      default="1,2",
      help="comma-separated worker counts for the whole prepare run ('' skips it)",
  )
  p.add_argument(
      "--rounds",
      type=int,
      default=1,
      help="alternating rounds of the " "in-process preprocessing measurement",
  )
  p.add_argument(
      "--reference-repo",
      type=Path,
      default=None,
      help="checkout of github.com/hzhou3/xMAE: time its process_signal too",
  )
  p.add_argument(
      "--commit",
      default=None,
      help="read the reference from this commit (git show; a bare clone works)",
  )
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.source != "synthetic" and not args.input:
    common.exit_with(f"--input is required for --source {args.source}")
  options = (
      {"num_subjects": args.num_subjects, "minutes_per_subject": args.minutes_per_subject}
      if args.source == "synthetic"
      else {}
  )
  units, reference = [], None
  try:
    if args.source != "synthetic":
      units = sources_lib.get(args.source).list_inputs(args.input, {})
    if args.reference_repo:
      reference = load_reference(args.reference_repo, args.commit)
  except (sources_lib.SourceError, XmaeError) as e:
    common.exit_with(str(e))
  units = units[: args.records] if args.records else units
  result = {
      "bench": "prepare",
      "source": args.source,
      "input": args.input,
      "records": len(units) if args.source != "synthetic" else None,
  }
  if args.source == "synthetic":
    result.update(num_subjects=args.num_subjects, minutes_per_subject=args.minutes_per_subject)
  else:
    result["preprocess"] = measure_preprocess(args.source, units, reference, args.rounds)
  runs = []
  for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
    with tempfile.TemporaryDirectory() as tmp:
      source_input = (
          args.input
          if args.source == "synthetic" or not args.records
          else _link_subset(units, Path(tmp) / "input")
      )
      start, cpu0 = time.perf_counter(), _cpu_seconds()
      try:
        report = prep.prepare_dataset(
            args.source,
            source_input,
            Path(tmp) / "ds",
            workers=workers,
            seed=args.seed,
            source_options=options,
            progress=False,
            log=None,
        )
      except prepare_rules.PrepareError as e:
        common.exit_with(str(e))
      seconds = time.perf_counter() - start
      cpu = _cpu_seconds() - cpu0
    runs.append(
        {
            "workers": workers,
            "seconds": round(seconds, 3),
            "segments": report["segments_kept"],
            "cpu_seconds": round(cpu, 3),
            # CPU time per segment does not depend on how busy a shared machine is
            "cpu_ms_per_segment": round(1000 * cpu / max(report["segments_kept"], 1), 2),
            "segments_per_s": round(report["segments_kept"] / seconds, 2),
        }
    )
  if runs:
    result.update(
        segments=runs[0]["segments"],
        segments_per_s={str(r["workers"]): r["segments_per_s"] for r in runs},
    )
  result.update(runs=runs, machine=common.machine_info())
  common.emit(result)
  return result


def measure_preprocess(source: str, units: list[str], reference, rounds: int) -> dict:
  """Segments per CPU-second of ours, ours unbatched and (optionally) the reference."""
  reader = sources_lib.get(source)
  config = pp.PreprocessConfig()
  cpu0 = time.process_time()
  recordings = [item for unit in units for item in _read(reader, unit)]
  read_cpu = time.process_time() - cpu0
  if not recordings:
    common.exit_with("no readable recording in the input")
  # name -> function of "warm-up only" (imports, filter designs, caches) -> segments prepared
  sides = {
      "ours": lambda warm: _ours(pp.segment_recording, recordings[: 1 if warm else None], config),
      "ours_unbatched": lambda warm: _ours(
          pp.segment_recording_unbatched, recordings[: 1 if warm else None], config
      ),
  }
  if reference is not None:
    windows = _reference_windows(recordings, config)
    prepared: list[int] = []
    sides["reference"] = lambda warm: _reference(
        reference, windows[: 4 if warm else None], None if warm else prepared
    )
  for side in sides.values():
    side(True)
  best: dict[str, tuple[float, int]] = {}
  for _ in range(max(rounds, 1)):
    for name, side in sides.items():
      cpu0 = time.process_time()
      count = side(False)
      cpu = time.process_time() - cpu0
      if name not in best or cpu < best[name][0]:
        best[name] = (cpu, count)
  out: dict[str, Any] = {
      "recordings": len(recordings),
      "read_cpu_s": round(read_cpu, 3),
      "rounds": max(rounds, 1),
  }
  for name, (cpu, count) in best.items():
    out[name] = {
        "segments": count,
        "cpu_s": round(cpu, 3),
        "segments_per_cpu_s": round(count / cpu, 2),
    }
  if reference is not None:
    out["reference"].update(prepared=min(prepared), source=reference.origin)
    out["speedup"] = round(
        out["ours"]["segments_per_cpu_s"] / out["reference"]["segments_per_cpu_s"], 2
    )
    out["speedup_unbatched"] = round(
        out["ours_unbatched"]["segments_per_cpu_s"] / out["reference"]["segments_per_cpu_s"], 2
    )
  return out


def _read(reader, unit):
  try:
    return [item for item in reader.read(unit, {}) if isinstance(item, sources_lib.Recording)]
  except sources_lib.SourceError:
    return []


def _ours(segment, recordings, config) -> int:
  count = 0
  for item in recordings:
    try:
      count += len(segment(item.signals, config)[0])
    except pp.PreprocessError:
      pass
  return count


def _reference_windows(recordings, config) -> list[tuple[np.ndarray, np.ndarray, float]]:
  """(ppg, ecg, fs): the raw window (NaN gaps repaired) of every segment we keep."""
  out = []
  for item in recordings:
    sig = {m: (pp.as_signal(x), float(fs)) for m, (x, fs) in item.signals.items()}
    if set(sig) != {"ppg", "ecg"} or sig["ppg"][1] != sig["ecg"][1]:
      continue
    fs = sig["ecg"][1]
    n = int(round(config.segment_seconds * fs))
    for seg in pp.segment_recording(item.signals, config)[0]:
      a = int(round(seg.start_s * fs))
      w = {m: pp.check_window(sig[m][0][a : a + n], fs, config)[0] for m in sig}
      out.append((w["ppg"], w["ecg"], fs))
  return out


def _reference(module, windows, prepared: list | None = None) -> int:
  """Runs the reference's process_signal on every window; returns how many it was given.

  The rate counts every window given, also those it raises on (its read_one_mat skips them), so
  its time is divided by our kept segments: the comparison per segment we keep. How many it
  prepared goes into `prepared`.
  """
  done = 0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for ppg, ecg, fs in windows:
      module.FS = fs
      try:
        module.process_signal(ppg, ecg)
        done += 1
      except Exception:  # as the reference's own loop: a failing window is skipped
        pass
  if prepared is not None:
    prepared.append(done)
  return len(windows)


class ReferenceSourceError(XmaeError):
  """The reference checkout cannot be read or imported."""


def load_reference(repo: Path, commit: str | None) -> types.ModuleType:
  """The reference's preprocessing module, imported from a temporary copy.

  Its PulseDB reading (mat73) and S3 upload (boto3) are not used here; when those packages are
  missing, empty stand-ins let the module import.
  """
  repo = Path(repo).expanduser()
  if commit is None:
    file = repo / REFERENCE_PREPROCESS_FILE
    if not file.is_file():
      raise ReferenceSourceError(
          f"--reference-repo {repo}: {REFERENCE_PREPROCESS_FILE} not found "
          "(pass --commit to read it from the repository's history)"
      )
    text, origin = file.read_text(), f"{repo} (working tree)"
  else:
    try:
      text = subprocess.run(
          ["git", "-C", str(repo), "show", f"{commit}:{REFERENCE_PREPROCESS_FILE}"],
          check=True,
          capture_output=True,
          text=True,
      ).stdout
    except (OSError, subprocess.CalledProcessError):
      raise ReferenceSourceError(
          f"--reference-repo {repo} --commit {commit}: cannot read " f"{REFERENCE_PREPROCESS_FILE}"
      ) from None
    origin = f"{repo} at {commit}"
  for name, attrs in (("mat73", {"loadmat": None}), ("boto3", {})):
    if importlib.util.find_spec(name) is None and name not in sys.modules:
      stand_in = types.ModuleType(name)
      stand_in.__dict__.update(attrs)
      sys.modules[name] = stand_in
  with tempfile.TemporaryDirectory() as tmp:
    file = Path(tmp) / "reference_process.py"
    file.write_text(text)
    spec = importlib.util.spec_from_file_location("reference_process", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  if not hasattr(module, "process_signal"):
    raise ReferenceSourceError(f"{origin}: {REFERENCE_PREPROCESS_FILE} defines no process_signal")
  module.origin = origin  # type: ignore[attr-defined]  # a module takes any attribute
  return module


def _link_subset(units: list[str], folder: Path) -> str:
  """A folder of links to the files of the chosen records (records of one file set each)."""
  folder.mkdir(parents=True)
  for unit in units:
    path = Path(unit)
    for f in path.parent.glob(path.name + ".*"):
      (folder / f.name).symlink_to(f.resolve())
  return str(folder)


def _cpu_seconds() -> float:
  """User + system CPU of this process and its finished children (the pool's workers)."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
  main()
