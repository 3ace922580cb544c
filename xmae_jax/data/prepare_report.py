"""What a finished `xmae-prepare` run writes about itself, the same for every runner: the
manifest (`write_manifest`, written last), the report (`build_report`, as report.json and
report.md) and its one-line summary, and the one-line errors of a run that kept nothing."""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Any

from xmae_jax import atomic
from xmae_jax.data import labels as labels_lib
from xmae_jax.data import prepare_rules as rules
from xmae_jax.data import preprocess as pp
from xmae_jax.data import shards
from xmae_jax.version import __version__

REPORT_JSON, REPORT_MD = "report.json", "report.md"


def write_manifest(
    out_dir,
    entries: dict[str, dict],
    *,
    source: str,
    input,
    units: list[str],
    options: dict[str, Any],
    config: pp.PreprocessConfig,
    seed: int,
    test_frac: float,
    val_frac: float,
    request: dict | None = None,
) -> dict:
  """The manifest of a prepared dataset (every runner writes the same one), written last."""
  input_root = None if input is None else Path(input)
  return shards.write_manifest(
      out_dir,
      entries,
      sampling_rate=config.target_fs,
      segment_length=config.segment_length,
      preprocessing=config.as_dict(),
      sources=[relative(u, input_root) for u in units],
      extra={
          "source": source,
          "source_options": options,
          "split": {
              "seed": seed,
              "test_frac": test_frac,
              "val_frac": val_frac,
              "method": "sklearn train_test_split on sorted subjects: test, then validation",
          },
          **({"request": request} if request is not None else {}),
      },
  )


def build_report(source, input, results, entries) -> dict[str, Any]:
  root = None if input is None else Path(input)
  dropped: collections.Counter = collections.Counter()
  cut: collections.Counter = collections.Counter()
  cut_seconds: collections.Counter = collections.Counter()
  notes: collections.Counter = collections.Counter()
  skipped_recordings: collections.Counter = collections.Counter()
  derived: dict[str, dict] = {}
  shifts: collections.Counter = collections.Counter()
  labels: dict[str, collections.Counter] = {}
  joined: collections.Counter = collections.Counter()  # recordings a labels file matched
  files_skipped, files_missing, per_file, warnings = [], [], [], []
  kept = 0
  for r in results:
    st = r["stats"]
    kept += st.get("segments_kept", 0)
    for k, v in st.items():
      if k.startswith("dropped/"):
        dropped[k[8:]] += v
      elif k.startswith("cut/"):
        cut[k[4:]] += v
      elif k.startswith("cut_seconds/"):
        cut_seconds[k[12:]] += v
      elif k.startswith("note/"):
        notes[k[5:]] += v
      elif k.startswith("recording_skipped/"):
        skipped_recordings[k[18:]] += v
      elif k.startswith("derived/"):
        derived.setdefault(k[8:], {"windows": 0, "nan": collections.Counter()})["windows"] += v
      elif k.startswith("derived_nan/"):
        name, reason = k[12:].split("/", 1)
        derived.setdefault(name, {"windows": 0, "nan": collections.Counter()})["nan"][reason] += v
      elif k.startswith(("ppg_shift/", "ppg_shift_seconds/")):
        shifts[k] += v
      elif k.startswith("label/"):
        name, value = k[6:].split("=", 1)
        labels.setdefault(name, collections.Counter())[value] += v
      elif k.startswith("labels/"):
        joined[k[7:]] += v
    unit = relative(r["unit"], root)
    if r["status"] != "ok":
      files_skipped.append({"file": unit, "reason": r["reason"]})
    files_missing.extend(
        {"file": relative(p, root), "reason": why, "input": unit} for p, why in r["missing"]
    )
    warnings.extend(
        {"recording": name, "warning": note, "input": unit} for name, note in r.get("warnings", [])
    )
    per_file.append(
        {
            "file": unit,
            "status": r["status"],
            "kept": st.get("segments_kept", 0),
            "dropped": sum(v for k, v in st.items() if k.startswith("dropped/")),
        }
    )
  return {
      "source": source,
      "input": None if input is None else str(input),
      "package_version": __version__,
      "files_total": len(results),
      "files_read": sum(r["status"] == "ok" for r in results),
      "files_skipped": files_skipped,
      "files_missing": files_missing,
      "segments_kept": kept,
      "segments_dropped": dict(sorted(dropped.items())),
      "segments_dropped_total": sum(dropped.values()),
      "stretches_cut": {
          k: {"runs": v, "seconds": round(cut_seconds[k], 3)} for k, v in sorted(cut.items())
      },
      "recordings_skipped": dict(sorted(skipped_recordings.items())),
      "quality_notes": dict(sorted(notes.items())),
      # per-window meta derived from the signals (hr, sbp_dbp): windows with a value, and the
      # windows left NaN per reason; and the windows per value of each recording label
      "derived_meta": {
          name: {
              "windows": d["windows"],
              "nan": dict(sorted(d["nan"].items())),
              "nan_total": sum(d["nan"].values()),
          }
          for name, d in sorted(derived.items())
      },
      "label_windows": {name: dict(sorted(c.items())) for name, c in sorted(labels.items())},
      # --labels FILE: recordings it matched, and those it did not (they carry no labels of it)
      "labels_joined": (
          {"recordings_matched": joined["matched"], "recordings_unmatched": joined["unmatched"]}
          if joined
          else {}
      ),
      # --ppg-align-seconds: recordings whose PPG delay was measured (mean shift), fell back to
      # --ppg-delay-seconds (too few clean beats), or were kept as recorded (pulses sooner)
      "ppg_alignment": (
          {
              "recordings_measured": shifts["ppg_shift/measured"],
              "recordings_fallback": shifts["ppg_shift/fallback"],
              "recordings_clipped_to_0": shifts["ppg_shift/clipped"],
              "mean_shift_s": round(
                  shifts["ppg_shift_seconds/measured"] / max(1, shifts["ppg_shift/measured"]), 4
              ),
          }
          if shifts
          else {}
      ),
      "input_warnings": warnings,
      "records_per_split": {s: e["records"] for s, e in entries.items()},
      "subjects_per_split": {s: e["subjects"] for s, e in entries.items()},
      "per_file": per_file,
  }


def labels_unmatched(results, options: dict[str, Any]) -> str | None:
  """The one-line error of a labels file that matched none of the recordings read
  (`labels.no_match`); None when it matched one (or none was given)."""
  table = labels_lib.table_of(options)
  if table is None or any(r["stats"].get("labels/matched", 0) for r in results):
    return None
  if table.by == "subject":
    seen = list(dict.fromkeys(s for r in results for s in r.get("subjects", [])))
  else:
    seen = [labels_lib.record_ids("", r["unit"])[-1] for r in results if r["status"] == "ok"]
  return labels_lib.no_match(
      table, sum(r["stats"].get("labels/unmatched", 0) for r in results), seen
  )


def summary_line(report: dict[str, Any]) -> str:
  return (
      f"xmae-prepare: {report['files_read']}/{report['files_total']} inputs read, "
      f"{len(report['files_skipped'])} skipped, {len(report['files_missing'])} missing; "
      f"{report['segments_kept']} segments kept, {report['segments_dropped_total']} dropped"
      f"{' ' + str(report['segments_dropped']) if report['segments_dropped'] else ''}; "
      f"records per split {report['records_per_split']}, "
      f"subjects {report['subjects_per_split']}"
      + (
          f"; {len(report['input_warnings'])} input warnings (see report.md)"
          if report.get("input_warnings")
          else ""
      )
  )


def nothing_kept(report: dict[str, Any], out: Path, first: int = 3) -> str:
  """The one-line error of a run that kept no segment: why, for the first few inputs."""
  why = [f"{f['file']}: {f['reason']}" for f in report["files_skipped"]]
  why += [f"{f['file']}: {f['reason']}" for f in report["files_missing"]]
  why += [
      f"{w['recording']}: {w['warning']}"
      for w in report["input_warnings"]
      if not w["warning"].startswith("non-numeric")
  ]
  if report["segments_dropped"]:
    why.append(
        "segments dropped: " + ", ".join(f"{k} {v}" for k, v in report["segments_dropped"].items())
    )
  more = f"; and {len(why) - first} more" if len(why) > first else ""
  text = "; ".join(why[:first]) + more
  return " ".join(
      f"nothing kept from {report['files_total']} input(s) "
      f"({len(report['files_skipped'])} skipped), no dataset written to {out}: "
      f"{text or 'no window found'}".split()
  )


def render_report(r: dict[str, Any]) -> str:
  lines = [
      f"# xmae-prepare report: {r['source']}",
      "",
      f"- input: `{r['input']}`",
      f"- package version: {r['package_version']}",
      f"- inputs: {r['files_total']} total, {r['files_read']} read, "
      f"{len(r['files_skipped'])} skipped, {len(r['files_missing'])} missing files",
      f"- segments kept: {r['segments_kept']}; dropped: {r['segments_dropped_total']}",
      f"- time: {r.get('seconds', 0)} s ({r.get('segments_per_s', 0)} segments/s), "
      f"{r.get('resumed_units', 0)} inputs reused from the cache",
      "",
      "| split | records | subjects |",
      "|---|---|---|",
  ]
  lines += [
      f"| {s} | {r['records_per_split'][s]} | {r['subjects_per_split'][s]} |"
      for s in r["records_per_split"]
  ]
  for title, d in (
      ("Segments dropped per reason", r["segments_dropped"]),
      ("Recordings skipped per reason", r["recordings_skipped"]),
      ("Quality could not be computed (stored as 0)", r["quality_notes"]),
  ):
    if d:
      lines += ["", f"## {title}", ""] + [f"- {k}: {v}" for k, v in d.items()]
  if r.get("derived_meta"):
    lines += ["", "## Meta derived per window (with a value; NaN per reason)", ""] + [
        f"- {k}: {d['windows']} windows with a value, {d['nan_total']} NaN"
        + (" (" + ", ".join(f"{why} {n}" for why, n in d["nan"].items()) + ")" if d["nan"] else "")
        for k, d in r["derived_meta"].items()
    ]
  if r.get("label_windows"):
    lines += ["", "## Windows per recording label", ""] + [
        f"- {k}: " + ", ".join(f"{value} {n}" for value, n in c.items())
        for k, c in r["label_windows"].items()
    ]
  if r.get("labels_joined"):
    j = r["labels_joined"]
    lines += [
        "",
        "## Labels file (--labels)",
        "",
        f"- recordings matched: {j['recordings_matched']}; without a row in it (no labels "
        f"of it): {j['recordings_unmatched']}",
    ]
  if r.get("ppg_alignment"):
    a = r["ppg_alignment"]
    lines += [
        "",
        "## PPG moved earlier per recording (--ppg-align-seconds)",
        "",
        f"- measured: {a['recordings_measured']} recordings, "
        f"mean shift {a['mean_shift_s']} s "
        f"({a['recordings_clipped_to_0']} of them kept as recorded: pulses already sooner)",
        f"- too few clean beats, fixed --ppg-delay-seconds used: {a['recordings_fallback']}",
    ]
  if r["stretches_cut"]:
    lines += ["", "## Cut out before windowing (NaN runs, flat lines)", ""] + [
        f"- {k}: {v['runs']} runs, {v['seconds']} s" for k, v in r["stretches_cut"].items()
    ]
  if r["files_skipped"]:
    lines += ["", "## Inputs skipped", ""] + [
        f"- `{f['file']}`: {f['reason']}" for f in r["files_skipped"]
    ]
  if r["files_missing"]:
    lines += ["", "## Files missing or unusable", ""] + [
        f"- `{f['file']}` (in `{f['input']}`): {f['reason']}" for f in r["files_missing"]
    ]
  if r.get("input_warnings"):
    lines += ["", "## Input warnings", ""] + [
        f"- `{w['recording']}` (in `{w['input']}`): {w['warning']}" for w in r["input_warnings"]
    ]
  return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | os.PathLike, report: dict[str, Any], started: float, *, runner: str
) -> dict[str, Any]:
  """Adds the run's timing to `report` and writes report.json and report.md into `out_dir`."""
  report["runner"] = runner
  report["seconds"] = round(time.time() - started, 3)
  report["segments_per_s"] = round(report["segments_kept"] / max(report["seconds"], 1e-9), 2)
  out = Path(out_dir)
  with rules.writing(out / REPORT_JSON):
    atomic.atomic_write(out / REPORT_JSON, json.dumps(report, indent=1, sort_keys=True))
  with rules.writing(out / REPORT_MD):
    atomic.atomic_write(out / REPORT_MD, render_report(report))
  return report


def relative(unit: str, root: Path | None) -> str:
  """`unit` as named under the input `root` (a file's folder for a file), else as given."""
  if root is None:
    return unit
  try:
    return str(Path(unit).relative_to(root if root.is_dir() else root.parent))
  except ValueError:
    return unit
