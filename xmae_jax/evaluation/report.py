"""Every report the evaluation writes, in one place: Markdown tables, JSON files, bar charts.

Probe, comparison, timing and reconstruction results are plain dicts (see their modules); this
module turns them into text and figures and writes them. Every file is written atomically
(`atomic.atomic_write`; figures through `training.figures.save_figure`), so a report on disk is
always a whole one. JSON numbers that numpy produced are written as floats (`default=float`);
result arrays (out-of-fold predictions, targets, subjects) never go into a report
(`json_ready`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xmae_jax import atomic
from xmae_jax import paths as paths_lib  # `paths` names output files here
from xmae_jax.evaluation import tasks as tasks_lib
from xmae_jax.training import figures

# The one number per task that tables and charts show.
PRIMARY = {
    tasks_lib.CLASSIFICATION: "auroc",
    tasks_lib.MULTICLASS: "macro_auroc",
    tasks_lib.REGRESSION: "r2",
}


# ---- files ------------------------------------------------------------------------------------


def to_json(obj: Any) -> str:
  return json.dumps(obj, indent=1, default=float)


def write_json(path, obj: Any) -> Path:
  return atomic.atomic_write(path, to_json(obj))


def write_text(path, text: str) -> Path:
  return atomic.atomic_write(path, text)


def json_ready(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Results without their arrays (predictions, targets, groups)."""
  return [{k: v for k, v in r.items() if not isinstance(v, np.ndarray)} for r in results]


# ---- probe results ----------------------------------------------------------------------------


def format_metric(m: dict[str, Any] | None) -> str:
  """`value [CI]` (linear protocol), `mean ± std` (xmae protocol), '' for no metric."""
  if not m:
    return ""
  if "value" in m:
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"
  return f"{m['mean']:.3f} ± {m['std']:.3f}"


def markdown_table(results: Sequence[dict[str, Any]], *, encoder_column: bool = False) -> str:
  """One row per (encoder,) task and protocol; metrics as `value [CI]` or `mean ± std`."""
  lines = []
  for kind in tasks_lib.KINDS:
    rows = [r for r in results if r["kind"] == kind]
    if not rows:
      continue
    metric_names = []
    for r in rows:
      for name in r["metrics"]:
        if name not in metric_names:
          metric_names.append(name)
    head = (["encoder"] if encoder_column else []) + ["task", "protocol", "segments", "subjects"]
    head += metric_names
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
      cells = ([r.get("encoder", "")] if encoder_column else []) + [
          r["task"],
          r["protocol"],
          str(r["n_segments"]),
          str(r["n_subjects"]),
      ]
      cells += [format_metric(r["metrics"].get(n)) for n in metric_names]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if kind == tasks_lib.MULTICLASS:
      lines += [_class_line(r, encoder_column) for r in rows] + [""]
  lines.append(
      "Linear protocol: value [subject-bootstrap 95% CI] on pooled out-of-fold "
      "predictions; xmae protocol: mean ± std over folds."
  )
  return "\n".join(lines) + "\n"


def _class_line(r: dict[str, Any], with_encoder: bool = False) -> str:
  """A multiclass result's classes: segments/subjects (and one-vs-rest AUROC) each, and the
  classes dropped for having fewer subjects than folds."""
  who = f"{r.get('encoder', '')}, " if with_encoder else ""
  parts = []
  for c in r["classes"]:
    auroc = f", AUROC {c['auroc']:.3f}" if "auroc" in c else ""
    parts.append(f"{c['name']} ({c['segments']} segments, {c['subjects']} subjects{auroc})")
  text = f"* {who}{r['task']} ({r['protocol']}): classes " + "; ".join(parts)
  if r.get("dropped_classes"):
    text += "; dropped: " + "; ".join(
        f"{c['name']} ({c['subjects']} subjects: {c['reason']})" for c in r["dropped_classes"]
    )
  return text


def write_probe_report(results, output_json=None, output_md=None) -> str:
  """The probe table (returned) and, where a path is given, the JSON and Markdown files."""
  table = markdown_table(results)
  if output_json:
    write_json(output_json, json_ready(results))
  if output_md:
    write_text(output_md, table)
  return table


# ---- comparisons of encoders ------------------------------------------------------------------


def primary_metric(r: dict) -> tuple[str, dict]:
  """(name, metric dict) of a result's primary metric (AUROC or R^2)."""
  name = PRIMARY[r["kind"]]
  if name not in r["metrics"]:  # the xmae protocol's regression metrics lack pearson; r2 exists
    name = next(iter(r["metrics"]))
  return name, r["metrics"][name]


def _value(m: dict) -> float:
  return m.get("value", m.get("mean"))


def _by_encoder_and_task(results, protocol):
  rows = [r for r in results if r["protocol"] == protocol]
  encoders = list(dict.fromkeys(r["encoder"] for r in rows))
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  return encoders, tasks, {(r["encoder"], r["task"]): r for r in rows}


def summary_table(results: Sequence[dict], protocol: str = "linear") -> str:
  """Rows = tasks, columns = encoders, cells = primary metric (AUROC or R^2) with its CI."""
  encoders, tasks, by = _by_encoder_and_task(results, protocol)
  lines = ["| task | metric | " + " | ".join(encoders) + " |", "|" + "---|" * (len(encoders) + 2)]
  for task in tasks:
    some = next(by[(e, task)] for e in encoders if (e, task) in by)
    metric, _ = primary_metric(some)
    cells = []
    best = max(
        (_value(by[(e, task)]["metrics"][metric]) for e in encoders if (e, task) in by),
        default=math.nan,
    )
    for e in encoders:
      if (e, task) not in by:
        cells.append("")
        continue
      m = by[(e, task)]["metrics"][metric]
      text = format_metric(m)
      cells.append(f"**{text}**" if _value(m) == best else text)
    lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def full_report(
    results: Sequence[dict], *, title: str = "Encoder comparison", notes: str = ""
) -> str:
  parts = [f"# {title}", ""]
  if notes:
    parts += [notes, ""]
  for protocol in dict.fromkeys(r["protocol"] for r in results):
    parts += [
        f"## Summary ({protocol} protocol; best in bold)",
        "",
        summary_table(results, protocol),
    ]
  parts += ["## Every metric", "", markdown_table(results, encoder_column=True)]
  return "\n".join(parts)


def format_signed(m: dict[str, Any] | None) -> str:
  """`+value [+lo, +hi]` of a paired difference; '' for none."""
  if not m:
    return ""
  return f"{m['value']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]"


def differences_table(diffs: Sequence[dict], metrics=("auroc", "macro_auroc", "r2", "mae")) -> str:
  """Encoder minus baseline per task: value [paired 95% CI]."""
  shown = [m for m in metrics if any(m in d["difference"] for d in diffs)]
  lines = [
      "| encoder | baseline | task | " + " | ".join(f"Δ {m}" for m in shown) + " |",
      "|" + "---|" * (3 + len(shown)),
  ]
  for d in diffs:
    cells = [format_signed(d["difference"].get(m)) for m in shown]
    lines.append(f"| {d['encoder']} | {d['baseline']} | {d['task']} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(
      "Δ = encoder − baseline on identical out-of-fold segments; 95% CI from a paired "
      "subject bootstrap (a CI that excludes 0 is a difference beyond resampling noise; "
      "for MAE, negative is better)."
  )
  return "\n".join(lines) + "\n"


def retention_table(rows: Sequence[dict], skipped: dict[str, str] | None = None) -> str:
  """Single-modality retention (compare.retention_vs_both): per encoder and task, the primary
  metric of the PPG-alone, ECG-alone and both-modality fingerprints, the ratios to both and the
  differences to both."""
  lines = [
      "| encoder | task | metric | segments | subjects | PPG alone | ECG alone | both | "
      "PPG / both | ECG / both | PPG − both | ECG − both |",
      "|" + "---|" * 12,
  ]
  for r in rows:
    metric = r["metric"]
    values = [format_metric(r["values"][k].get(metric)) for k in ("ppg", "ecg", "ppg+ecg")]
    ratios = [format_metric(r["ratio"][k].get(metric)) for k in ("ppg", "ecg")]
    diffs = [format_signed(r["difference"][k].get(metric)) for k in ("ppg", "ecg")]
    lines.append(
        f"| {r['encoder']} | {r['task']} | {metric} | {r['n_segments']} | "
        f"{r['n_subjects']} | " + " | ".join(values + ratios + diffs) + " |"
    )
  lines += [
      "",
      "The three fingerprints of an encoder embed the same windows (those with both "
      "PPG and ECG) and are probed on identical subject-grouped folds (linear protocol). "
      "Values: [subject-bootstrap 95% CI]; ratios (retention: one-modality metric / "
      "both-modality metric, 1 = nothing lost) and differences: [paired subject-bootstrap "
      "95% CI], the same subjects resampled for both fingerprints. A ratio is only "
      "meaningful where the both-modality metric is well above 0: for R² near 0 (or "
      "negative) it is unstable or changes sign, so read the difference there; an AUROC "
      "ratio counts from 0, not from chance (0.5). results.json holds every metric's "
      "values (encoders NAME:ppg, NAME:ecg, NAME:ppg+ecg), retention.json every metric's "
      "ratio and difference.",
  ]
  if skipped:
    lines += [""] + [f"* {name}: no retention ({why})" for name, why in skipped.items()]
  return "\n".join(lines) + "\n"


def bar_chart(results: Sequence[dict], path, *, protocol: str = "linear", title: str = "") -> Path:
  """Primary metric per task (one group) and encoder (one bar), with 95% CI error bars."""
  # matplotlib takes a while to import, and its backend is set before pyplot loads.
  import matplotlib

  matplotlib.use("Agg", force=True)
  # After the backend is set.
  import matplotlib.pyplot as plt

  encoders, tasks, by = _by_encoder_and_task(results, protocol)
  width = 0.8 / max(len(encoders), 1)
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks) + 2), 3.8))
  for i, e in enumerate(encoders):
    xs, vals, lo, hi = [], [], [], []
    for j, task in enumerate(tasks):
      if (e, task) not in by:
        continue
      _, m = primary_metric(by[(e, task)])
      v = _value(m)
      if "ci95" in m:
        a, b = m["ci95"]
      else:
        a, b = v - m["std"], v + m["std"]
      xs.append(j + (i - (len(encoders) - 1) / 2) * width)
      vals.append(v)
      lo.append(max(v - a, 0) if np.isfinite(a) else 0)
      hi.append(max(b - v, 0) if np.isfinite(b) else 0)
    ax.bar(xs, vals, width, yerr=[lo, hi], capsize=2, label=e)
  labels = []
  for task in tasks:
    some = next(by[(e, task)] for e in encoders if (e, task) in by)
    labels.append(f"{task}\n({primary_metric(some)[0]})")
  ax.set_xticks(range(len(tasks)))
  ax.set_xticklabels(labels, fontsize=8)
  ax.axhline(0.5, color="0.6", lw=0.6, ls="--")
  ax.axhline(0.0, color="0.3", lw=0.6)
  ax.set_ylabel("AUROC (classification; multiclass: macro) / R² (regression)")
  ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.0)
  ax.legend(
      fontsize=7,
      ncol=min(len(encoders), 5),
      frameon=False,
      loc="upper center",
      bbox_to_anchor=(0.5, 1.16),
  )
  if title:
    ax.set_title(title, fontsize=9, pad=24)
  return figures.save_figure(fig, path, dpi=100)


def write_comparison(results, out_dir, *, title="Encoder comparison", notes="") -> dict[str, Path]:
  """OUT/results.json, OUT/table.md and OUT/comparison.png of a comparison."""
  out = paths_lib.path(out_dir)
  paths = {
      "json": out / "results.json",
      "markdown": out / "table.md",
      "png": out / "comparison.png",
  }
  write_json(paths["json"], json_ready(results))
  write_text(paths["markdown"], full_report(results, title=title, notes=notes))
  protocol = "linear" if any(r["protocol"] == "linear" for r in results) else results[0]["protocol"]
  bar_chart(results, paths["png"], protocol=protocol, title=title)
  return paths


# ---- timing (PTT and HR from PPG embeddings) ----------------------------------------------------


def timing_markdown(report: dict[str, Any]) -> str:
  results = [r for r in report["results"] if r["protocol"] == "linear"]
  encoders = list(dict.fromkeys(r["encoder"] for r in results))
  by = {(r["encoder"], r["task"]): r for r in results}
  ctrl = {(c["encoder"], c["task"]): c for c in report["controls"]}
  lines = ["# Timing: PTT and heart rate from frozen PPG embeddings", ""]
  for task in report["tasks"]:
    unit = tasks_lib.REGISTRY[tasks_lib.parse(task)[0].name].unit
    lines += [
        f"## {task} ({unit})",
        "",
        "| encoder | MAE | R² | Pearson r | shuffled-target R² (control) | segments "
        "| subjects |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in encoders:
      r = by.get((e, task))
      if r is None:
        continue
      c = ctrl.get((e, task))
      lines.append(
          f"| {e} | {format_metric(r['metrics'].get('mae'))} | "
          f"{format_metric(r['metrics'].get('r2'))} | "
          f"{format_metric(r['metrics'].get('pearson_r'))} | "
          f"{format_metric(c['metrics'].get('r2')) if c else ''} | {r['n_segments']} | "
          f"{r['n_subjects']} |"
      )
    lines.append("")
  if report["differences"]:
    lines += [
        f"## Paired differences to {report['baseline']}",
        "",
        differences_table(report["differences"], metrics=("r2", "mae")),
    ]
  lines.append(
      "Linear probe (ridge on standardized embeddings, alpha by inner subject-grouped CV, "
      "outer subject-grouped folds); value [subject-bootstrap 95% CI]."
  )
  return "\n".join(lines) + "\n"


def write_timing(report: dict[str, Any], results, out_dir) -> None:
  """OUT/timing.json, OUT/timing.md and OUT/timing.png."""
  out = paths_lib.path(out_dir)
  write_json(out / "timing.json", report)
  write_text(out / "timing.md", timing_markdown(report))
  bar_chart(results, out / "timing.png", title="PTT and HR from frozen PPG embeddings")


# ---- reconstruction (masked ECG from PPG; both ways for M2AE) ---------------------------------


def reconstruction_markdown(report: dict[str, Any]) -> str:
  lines = [
      "# Cross-modal reconstruction report (masked ECG from PPG; both ways for M2AE)",
      "",
      f"Masks: each model's own masking config, seed {report['seed']}; R-peaks: NeuroKit2 "
      f"`ecg_peaks` (method neurokit) at {report['fs']:g} Hz; beats matched one-to-one within "
      f"{report['tolerance_ms']:g} ms; 'within 50 ms' counts unmatched true beats as misses.",
      "",
      "Direction `ecg<-ppg`: ECG reconstructed from PPG, timed by R-peaks; `ppg<-ecg`: PPG "
      "from ECG, timed by pulse feet (the minimum before each NeuroKit2 `ppg_peaks` "
      "(method elgendi) systolic peak), so its beats and extra peaks are feet. Scored "
      "samples: the masked ones for the xMAE family; every one for M2AE (the whole target "
      "decoded from the other modality alone). The control replaces the conditioning "
      "modality with another window's.",
      "",
      "| model | direction | data | condition | segments | median r [IQR] (scored samples) | "
      "true beats | sensitivity | median abs R-peak / foot error (ms) | share within 50 ms | "
      "extra peaks |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in report["rows"]:
    direction = row.get("direction", "ecg<-ppg")
    source = direction.split("<-")[1]
    conditions = (
        (f"{source.upper()} paired", "reconstruction"),
        (f"{source.upper()} shuffled (control)", f"shuffled_{source}_control"),
    )
    for cond, key in conditions:
      s = row.get(key)
      if not s:
        continue
      lines.append(
          f"| {row['name']} | {direction} | {row['data']} | {cond} | {s['segments']} | "
          f"{s['median_r']:.3f} [{s['iqr_r'][0]:.3f}, {s['iqr_r'][1]:.3f}] | {s['true_beats']} | "
          f"{s['sensitivity']:.3f} | {s['median_abs_error_ms']:.1f} | "
          f"{s['share_within_50ms']:.3f} | {s['extra_peaks']} |"
      )
  differences = [r for r in report["rows"] if r.get("paired_minus_control")]
  if differences:
    lines += ["", "Paired minus control on the same windows, 95% CI from resampling subjects:", ""]
    for row in differences:
      d = row["paired_minus_control"]
      lines.append(
          f"* {row['name']} ({row.get('direction', 'ecg<-ppg')}) on {row['data']}: sensitivity "
          f"{d['sensitivity']['value']:+.3f} [{d['sensitivity']['ci95'][0]:+.3f}, "
          f"{d['sensitivity']['ci95'][1]:+.3f}], share within 50 ms "
          f"{d['share_within_50ms']['value']:+.3f} [{d['share_within_50ms']['ci95'][0]:+.3f}, "
          f"{d['share_within_50ms']['ci95'][1]:+.3f}] ({d['subjects']} subjects)"
      )
  if report.get("ceilings"):
    lines += [
        "",
        "What PPG beat timing alone could explain (`timing_ceiling`; MSE of the min-max "
        "ECG, the masked-ECG loss's units): each window's mean; a population mean beat at "
        "every PPG systolic peak minus the median R-to-peak delay, blurred by its spread; "
        "the window's own beat at its true R-peaks.",
        "",
        "| data | windows | window mean | PPG timing, population beat | true R-peaks, own "
        "beat | R-to-systolic-peak delay, median [IQR] (ms) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['data']} | {c['windows']} | {c['mse_window_mean']:.4f} | "
        f"{c['mse_ppg_timing']:.4f} | {c['mse_r_peaks_own_beat']:.4f} | "
        f"{c['delay_ms_median']:.0f} "
        f"[{c['delay_ms_iqr'][0]:.0f}, {c['delay_ms_iqr'][1]:.0f}] |"
        for c in report["ceilings"]
    ]
  lines.append("")
  for row in report["rows"]:
    if row.get("figure"):
      lines.append(
          f"* {row['name']} ({row.get('direction', 'ecg<-ppg')}) on {row['data']}: "
          f"`{row['figure']}`"
      )
  for row in report["rows"]:
    if row.get("notes"):
      lines.append(f"* {row['data']} windows: {json.dumps(row['notes'])}")
  return "\n".join(lines) + "\n"


def write_reconstruction(report: dict[str, Any], out_dir) -> None:
  """OUT/reconstruction.json and OUT/reconstruction.md."""
  out = paths_lib.path(out_dir)
  write_json(out / "reconstruction.json", report)
  write_text(out / "reconstruction.md", reconstruction_markdown(report))
