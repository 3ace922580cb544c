"""xmae-prepare benchmark: `python -m xmae_jax.bench prepare --source synthetic|wfdb [--input DIR]
[--num-subjects N] [--minutes-per-subject M] [--workers 1,2]`.

Runs the whole of `prepare_dataset` (read or simulate, clean, quality, resample, window,
encode, split, write shards) into a fresh temporary directory once per worker count, and prints
one JSON line with segments_per_s per worker count. Wall time includes starting the worker
processes, as a user sees it.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from xmae_jax.benchmarks import common
from xmae_jax.data import prepare as prep


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog="python -m xmae_jax.bench prepare")
  p.add_argument("--source", default="synthetic", choices=["synthetic", "wfdb", "pulsedb",
                                                            "csv", "npz"])
  p.add_argument("--input", default=None, help="input for file sources")
  p.add_argument("--num-subjects", type=int, default=40)
  p.add_argument("--minutes-per-subject", type=float, default=2.0)
  p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.source != "synthetic" and not args.input:
    common.exit_with(f"--input is required for --source {args.source}")
  options = ({"num_subjects": args.num_subjects, "minutes_per_subject": args.minutes_per_subject}
             if args.source == "synthetic" else {})
  runs = []
  for workers in [int(w) for w in args.workers.split(",")]:
    with tempfile.TemporaryDirectory() as tmp:
      start, cpu0 = time.perf_counter(), _cpu_seconds()
      try:
        report = prep.prepare_dataset(args.source, args.input, Path(tmp) / "ds", workers=workers,
                                      seed=args.seed, source_options=options, progress=False,
                                      log=None)
      except prep.PrepareError as e:
        common.exit_with(str(e))
      seconds = time.perf_counter() - start
      cpu = _cpu_seconds() - cpu0
    runs.append({"workers": workers, "seconds": round(seconds, 3),
                 "segments": report["segments_kept"], "cpu_seconds": round(cpu, 3),
                 # CPU time per segment does not depend on how busy a shared machine is
                 "cpu_ms_per_segment": round(1000 * cpu / max(report["segments_kept"], 1), 2),
                 "segments_per_s": round(report["segments_kept"] / seconds, 2)})
  result = {
      "bench": "prepare", "source": args.source, "input": args.input,
      **({"num_subjects": args.num_subjects, "minutes_per_subject": args.minutes_per_subject}
         if args.source == "synthetic" else {}),
      "segments": runs[0]["segments"],
      "segments_per_s": {str(r["workers"]): r["segments_per_s"] for r in runs},
      "runs": runs,
      "machine": common.machine_info(),
  }
  common.emit(result)
  return result


def _cpu_seconds() -> float:
  """User + system CPU of this process and its finished children (the pool's workers)."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
  main()
