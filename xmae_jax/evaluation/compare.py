"""Several frozen encoders on the same segments, tasks and folds: one table and one bar chart.

Encoders are given as `NAME=PATH` (an exported package or a training workdir) or, for the
random-initialization baseline, `NAME=CONFIG_FILE[:ARG]` through `random_specs` (the model of
that config built with `seed` and never trained). Every encoder embeds the same segments of a
prepared dataset; the probe folds depend only on the subjects and targets, so every encoder is
scored on identical splits.

Outputs in OUT_DIR: `embeddings/NAME.npz`, `results.json` (every probe result, with encoder
names), `table.md` (a summary of the primary metric per task and encoder, then every metric),
`comparison.png` (primary metric with its 95% CI per task, one bar per encoder).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xmae_jax import config_lib
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import tasks as tasks_lib
from xmae_jax.training import figures

PRIMARY = {tasks_lib.CLASSIFICATION: "auroc", tasks_lib.REGRESSION: "r2"}


class CompareError(ValueError):
  """A comparison that cannot run as asked (bad encoder spec, duplicate names, no tasks)."""


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  name: str
  path: str = ""                  # package or workdir
  random_config: str = ""         # CONFIG_FILE[:ARG] for a randomly initialized encoder
  seed: int = 0
  step: str = "auto"


def parse_spec(text: str, *, random: bool = False, seed: int = 0, step: str = "auto") -> EncoderSpec:
  name, sep, value = text.partition("=")
  if not sep or not name or not value:
    raise CompareError(f"encoder {text!r}: expected NAME=PATH"
                       + (" (NAME=CONFIG_FILE[:ARG] for --random)" if random else ""))
  if random:
    return EncoderSpec(name=name, random_config=value, seed=seed)
  return EncoderSpec(name=name, path=value, step=step)


def build_encoder(spec: EncoderSpec, modality: str = "ppg", batch_size: int = 256):
  if spec.random_config:
    try:   # a config file, or a workdir/package: the untrained twin of that architecture
      config = config_lib.load(spec.random_config)
    except config_lib.ConfigError as e:
      raise CompareError(str(e)) from None
    enc = encoder_lib.random_encoder(config, modality, seed=spec.seed, batch_size=batch_size)
    enc.info = {"source": {"random_init": spec.random_config, "seed": spec.seed}}
    return enc
  return encoder_lib.load_encoder(spec.path, step=spec.step, modality=modality,
                                  batch_size=batch_size)


def embed_all(specs: Sequence[EncoderSpec], data_dir, out_dir, *, modality: str = "ppg",
              splits: Sequence[str] | None = None, reuse: bool = False) -> dict[str, Path]:
  """Embeds the dataset with every encoder; returns {name: embeddings file}."""
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise CompareError(f"encoder names must be unique, got {names}")
  files = {}
  for spec in specs:
    path = Path(out_dir) / "embeddings" / f"{spec.name}.npz"
    if not (reuse and path.is_file()):
      enc = build_encoder(spec, modality)
      embed_lib.embed_input(enc, data_dir, path, source="dataset", splits=splits)
    files[spec.name] = path
  return files


def check_same_segments(arrays: dict[str, dict]) -> None:
  """Every encoder must have embedded the same segments in the same order."""
  names = list(arrays)
  ref = arrays[names[0]]["segment_ids"]
  for name in names[1:]:
    if not np.array_equal(arrays[name]["segment_ids"], ref):
      raise CompareError(f"embeddings of {name!r} and {names[0]!r} cover different segments")


def probe_all(files: dict[str, Path], task_specs: Sequence[str] | None, *,
              protocols=("linear",), linear_cfg=probe_lib.LinearProbeConfig(),
              xmae_cfg=probe_lib.XMAEProbeConfig(), keep_predictions=False
              ) -> list[dict[str, Any]]:
  arrays = {name: embed_lib.load_embeddings(f) for name, f in files.items()}
  check_same_segments(arrays)
  first = next(iter(arrays.values()))
  fields = tasks_lib.fields_from_arrays(first)
  if not task_specs or list(task_specs) == ["all"]:
    task_specs = [t for t in tasks_lib.DEFAULT_TASKS if tasks_lib.available(t, fields)]
  if not task_specs:
    raise CompareError("none of the tasks has its fields in this data")
  results = []
  for name, a in arrays.items():
    for r in probe_lib.run_tasks(a["embeddings"], a["subject_ids"], fields, task_specs,
                                 protocols=protocols, linear_cfg=linear_cfg, xmae_cfg=xmae_cfg,
                                 keep_predictions=keep_predictions):
      results.append({"encoder": name, **r})
  return results


# ----------------------------------------------------------------------------------------------
# Reports


def _primary(r: dict) -> tuple[str, dict]:
  name = PRIMARY[r["kind"]]
  if name not in r["metrics"]:   # the xmae protocol's regression metrics lack pearson; r2 exists
    name = next(iter(r["metrics"]))
  return name, r["metrics"][name]


def summary_table(results: Sequence[dict], protocol: str = "linear") -> str:
  """Rows = tasks, columns = encoders, cells = primary metric (AUROC or R^2) with its CI."""
  rows = [r for r in results if r["protocol"] == protocol]
  encoders = list(dict.fromkeys(r["encoder"] for r in rows))
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  by = {(r["encoder"], r["task"]): r for r in rows}
  lines = ["| task | metric | " + " | ".join(encoders) + " |", "|" + "---|" * (len(encoders) + 2)]
  for task in tasks:
    some = next(by[(e, task)] for e in encoders if (e, task) in by)
    metric, _ = _primary(some)
    cells = []
    best = max((by[(e, task)]["metrics"][metric].get("value", by[(e, task)]["metrics"][metric].get("mean"))
                for e in encoders if (e, task) in by), default=math.nan)
    for e in encoders:
      if (e, task) not in by:
        cells.append("")
        continue
      m = by[(e, task)]["metrics"][metric]
      text = probe_lib.format_metric(m)
      v = m.get("value", m.get("mean"))
      cells.append(f"**{text}**" if v == best else text)
    lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def full_report(results: Sequence[dict], *, title: str = "Encoder comparison", notes: str = "") -> str:
  parts = [f"# {title}", ""]
  if notes:
    parts += [notes, ""]
  for protocol in dict.fromkeys(r["protocol"] for r in results):
    parts += [f"## Summary ({protocol} protocol; best in bold)", "",
              summary_table(results, protocol)]
  parts += ["## Every metric", "", probe_lib.markdown_table(results, encoder_column=True)]
  return "\n".join(parts)


def bar_chart(results: Sequence[dict], path, *, protocol: str = "linear", title: str = "") -> Path:
  """Primary metric per task (one group) and encoder (one bar), with 95% CI error bars."""
  import matplotlib
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt
  rows = [r for r in results if r["protocol"] == protocol]
  encoders = list(dict.fromkeys(r["encoder"] for r in rows))
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  by = {(r["encoder"], r["task"]): r for r in rows}
  width = 0.8 / max(len(encoders), 1)
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks) + 2), 3.8))
  for i, e in enumerate(encoders):
    xs, vals, lo, hi = [], [], [], []
    for j, task in enumerate(tasks):
      if (e, task) not in by:
        continue
      _, m = _primary(by[(e, task)])
      v = m.get("value", m.get("mean"))
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
    labels.append(f"{task}\n({_primary(some)[0]})")
  ax.set_xticks(range(len(tasks)))
  ax.set_xticklabels(labels, fontsize=8)
  ax.axhline(0.5, color="0.6", lw=0.6, ls="--")
  ax.axhline(0.0, color="0.3", lw=0.6)
  ax.set_ylabel("AUROC (classification) / R² (regression)")
  ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.0)
  ax.legend(fontsize=7, ncol=min(len(encoders), 5), frameon=False, loc="upper center",
            bbox_to_anchor=(0.5, 1.16))
  if title:
    ax.set_title(title, fontsize=9, pad=24)
  return figures.save_figure(fig, path, dpi=100)


def write_outputs(results, out_dir, *, title="Encoder comparison", notes="") -> dict[str, Path]:
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"json": out / "results.json", "markdown": out / "table.md", "png": out / "comparison.png"}
  for key, text in (("json", json.dumps(probe_lib.json_ready(results), indent=1, default=float)),
                    ("markdown", full_report(results, title=title, notes=notes))):
    tmp = paths[key].with_name(paths[key].name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, paths[key])
  protocol = "linear" if any(r["protocol"] == "linear" for r in results) else results[0]["protocol"]
  bar_chart(results, paths["png"], protocol=protocol, title=title)
  return paths


def compare(specs: Sequence[EncoderSpec], data_dir, out_dir, task_specs=None, *,
            modality="ppg", splits=None, protocols=("linear",),
            linear_cfg=probe_lib.LinearProbeConfig(), xmae_cfg=probe_lib.XMAEProbeConfig(),
            reuse_embeddings=False, title="Encoder comparison", notes="",
            baseline: str | None = None) -> list[dict[str, Any]]:
  """Embed with every encoder, probe every task, write the table, JSON and chart.

  With `baseline` (an encoder name, e.g. the random-init one), the report also gets every other
  encoder's paired difference to it (differences.json and a table).
  """
  if not specs:
    raise CompareError("no encoders to compare")
  if baseline is not None and baseline not in [s.name for s in specs]:
    raise CompareError(f"baseline {baseline!r} is not one of the encoders")
  files = embed_all(specs, data_dir, out_dir, modality=modality, splits=splits,
                    reuse=reuse_embeddings)
  results = probe_all(files, task_specs, protocols=protocols, linear_cfg=linear_cfg,
                      xmae_cfg=xmae_cfg, keep_predictions=baseline is not None)
  if baseline is not None:
    diffs = differences_vs(results, baseline, n_bootstrap=linear_cfg.n_bootstrap, seed=linear_cfg.seed)
    notes = (notes + "\n\n" if notes else "") + f"## Paired differences to {baseline}\n\n" + \
        differences_table(diffs)
    _write_text(Path(out_dir) / "differences.json", json.dumps(diffs, indent=1, default=float))
  write_outputs(results, out_dir, title=title, notes=notes)
  return probe_lib.json_ready(results)


def _write_text(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def differences_vs(results: Sequence[dict], baseline: str, *, n_bootstrap: int = 1000,
                   seed: int = 0) -> list[dict[str, Any]]:
  """Paired (same segments, same subjects resampled) metric differences of every encoder minus
  `baseline`, for linear-protocol results that kept their predictions."""
  rows = [r for r in results if r["protocol"] == "linear" and "predictions" in r]
  base = {r["task"]: r for r in rows if r["encoder"] == baseline}
  if not base:
    raise CompareError(f"baseline encoder {baseline!r} has no linear-probe results")
  out = []
  for r in rows:
    b = base.get(r["task"])
    if r["encoder"] == baseline or b is None:
      continue
    if not np.array_equal(r["targets"], b["targets"]):
      raise CompareError(f"task {r['task']}: {r['encoder']} and {baseline} were scored on different targets")
    diff = probe_lib.paired_difference(r["targets"], r["predictions"], b["predictions"],
                                       r["groups"], r["kind"], n_bootstrap=n_bootstrap, seed=seed)
    out.append({"encoder": r["encoder"], "baseline": baseline, "task": r["task"], "kind": r["kind"],
                "difference": diff})
  return out


def differences_table(diffs: Sequence[dict], metrics=("auroc", "r2", "mae")) -> str:
  """Encoder minus baseline per task: value [paired 95% CI]."""
  shown = [m for m in metrics if any(m in d["difference"] for d in diffs)]
  lines = ["| encoder | baseline | task | " + " | ".join(f"Δ {m}" for m in shown) + " |",
           "|" + "---|" * (3 + len(shown))]
  for d in diffs:
    cells = []
    for m in shown:
      v = d["difference"].get(m)
      cells.append(f"{v['value']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" if v else "")
    lines.append(f"| {d['encoder']} | {d['baseline']} | {d['task']} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append("Δ = encoder − baseline on identical out-of-fold segments; 95% CI from a paired "
               "subject bootstrap (a CI that excludes 0 is a difference beyond resampling noise; "
               "for MAE, negative is better).")
  return "\n".join(lines) + "\n"
