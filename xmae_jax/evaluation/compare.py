"""Several frozen encoders on the same segments, tasks and folds: one table and one bar chart.

Encoders are given as `NAME=PATH` (an exported package or a training workdir) or, for the
random-initialization baseline, `NAME=CONFIG_FILE[:ARG]` through `random_specs` (the model of
that config built with `seed` and never trained). Every encoder embeds the same segments of a
prepared dataset; the probe folds depend only on the subjects and targets, so every encoder is
scored on identical splits.

Outputs in OUT_DIR: `embeddings/NAME.npz`, `results.json` (every probe result, with encoder
names), `table.md` (a summary of the primary metric per task and encoder, then every metric),
`comparison.png` (primary metric with its 95% CI per task, one bar per encoder).

Single-modality retention (`retention=True`, for M2AE's joint fingerprints): every encoder that
takes both modalities (a ppg+ecg package, an M2AE workdir or config) embeds the windows that
have both modalities three ways, from PPG alone, ECG alone and both (`embeddings/retention/NAME/
{ppg,ecg,ppg+ecg}.npz`; one read of the windows, so the three are the same windows); each task is
probed on identical folds (they depend only on subjects and targets). The three probe results
join results.json as encoders `NAME:ppg`, `NAME:ecg`, `NAME:ppg+ecg`; `retention.json` and a
table.md section give, per task, the one-modality / both-modality ratio and difference of every
metric with paired subject-bootstrap CIs (the table: the task's primary metric). Encoders
without both modalities are listed as skipped, with the reason; none with both is an error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xmae_jax import config_lib
from xmae_jax import progress
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import encoder_module
from xmae_jax.evaluation import package as package_lib
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import probe_metrics
from xmae_jax.evaluation import report
from xmae_jax.evaluation import tasks as tasks_lib


class CompareError(XmaeError):
  """A comparison that cannot run as asked (bad encoder spec, duplicate names, no tasks)."""


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  name: str
  path: str = ""  # package or workdir
  random_config: str = ""  # CONFIG_FILE[:ARG] for a randomly initialized encoder
  seed: int = 0
  step: str = "auto"


def parse_named(text: str, what: str, expected: str = "NAME=PATH") -> tuple[str, str]:
  """`NAME=VALUE` -> (name, value); both must be non-empty."""
  name, sep, value = text.partition("=")
  if not sep or not name or not value:
    raise CompareError(f"{what} {text!r}: expected {expected}")
  return name, value


def parse_spec(
    text: str, *, random: bool = False, seed: int = 0, step: str = "auto"
) -> EncoderSpec:
  name, value = parse_named(
      text, "encoder", "NAME=PATH" + (" (NAME=CONFIG_FILE[:ARG] for --random)" if random else "")
  )
  if random:
    return EncoderSpec(name=name, random_config=value, seed=seed)
  return EncoderSpec(name=name, path=value, step=step)


def encoder_specs(
    encoders: Sequence[str] = (), randoms: Sequence[str] = (), *, step: str = "auto", seed: int = 0
) -> list[EncoderSpec]:
  """The specs of `NAME=PATH` encoders and `NAME=CONFIG` randomly initialized ones, in order."""
  return [parse_spec(s, step=step) for s in encoders] + [
      parse_spec(s, random=True, seed=seed) for s in randoms
  ]


def check_baseline(specs: Sequence[EncoderSpec], baseline: str | None) -> None:
  if baseline is not None and baseline not in [s.name for s in specs]:
    raise CompareError(f"baseline {baseline!r} is not one of the encoders")


def build_encoder(spec: EncoderSpec, modality: str = "ppg", batch_size: int = 256):
  if spec.random_config:
    # A config file, or a workdir/package: the untrained twin of that architecture.
    config = config_lib.load(spec.random_config)
    enc = encoder_lib.random_encoder(config, modality, seed=spec.seed, batch_size=batch_size)
    enc.info = {"source": {"random_init": spec.random_config, "seed": spec.seed}}
    return enc
  return encoder_lib.load_encoder(
      spec.path, step=spec.step, modality=modality, batch_size=batch_size
  )


def embed_all(
    specs: Sequence[EncoderSpec],
    data_dir,
    out_dir,
    *,
    modality: str = "ppg",
    splits: Sequence[str] | None = None,
    reuse: bool = False,
) -> dict[str, Path]:
  """Embeds the dataset with every encoder; returns {name: embeddings file}."""
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise CompareError(f"encoder names must be unique, got {names}")
  files = {}
  for spec in progress.bar(specs, desc="embedding with each encoder", unit="encoder"):
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


def probe_all(
    files: dict[str, Path],
    task_specs: Sequence[str] | None,
    *,
    protocols=("linear",),
    linear_cfg=probe_config.LinearProbeConfig(),
    xmae_cfg=probe_config.XMAEProbeConfig(),
    keep_predictions=False,
) -> list[dict[str, Any]]:
  arrays = {name: embed_lib.load_embeddings(f) for name, f in files.items()}
  check_same_segments(arrays)
  first = next(iter(arrays.values()))
  fields = tasks_lib.fields_from_arrays(first)
  task_specs = probe_lib.resolve_tasks(task_specs, fields)
  results = []
  for name, a in arrays.items():
    for r in probe_lib.run_tasks(
        a["embeddings"],
        a["subject_ids"],
        fields,
        task_specs,
        protocols=protocols,
        linear_cfg=linear_cfg,
        xmae_cfg=xmae_cfg,
        keep_predictions=keep_predictions,
        desc=f"probing {name}",
    ):
      results.append({"encoder": name, **r})
  return results


def compare(
    specs: Sequence[EncoderSpec],
    data_dir,
    out_dir,
    task_specs=None,
    *,
    modality="ppg",
    splits=None,
    protocols=("linear",),
    linear_cfg=probe_config.LinearProbeConfig(),
    xmae_cfg=probe_config.XMAEProbeConfig(),
    reuse_embeddings=False,
    title="Encoder comparison",
    notes="",
    baseline: str | None = None,
    retention: bool = False,
) -> list[dict[str, Any]]:
  """Embed with every encoder, probe every task, write the table, JSON and chart.

  With `baseline` (an encoder name, e.g. the random-init one), the report also gets every other
  encoder's paired difference to it (differences.json and a table). With `retention`, the
  single-modality retention of the encoders that take both modalities (see the module
  docstring; retention.json and a table; linear protocol, which keeps the predictions the
  paired bootstrap needs).
  """
  if not specs:
    raise CompareError("no encoders to compare")
  check_baseline(specs, baseline)
  files = embed_all(
      specs, data_dir, out_dir, modality=modality, splits=splits, reuse=reuse_embeddings
  )
  if retention:  # before the first probe, so that "no encoder with both" comes without the wait
    retention_files, skipped = embed_retention(
        specs, data_dir, out_dir, splits=splits, reuse=reuse_embeddings
    )
  results = probe_all(
      files,
      task_specs,
      protocols=protocols,
      linear_cfg=linear_cfg,
      xmae_cfg=xmae_cfg,
      keep_predictions=baseline is not None,
  )
  sections = [notes] if notes else []
  if baseline is not None:
    diffs = differences_vs(
        results, baseline, n_bootstrap=linear_cfg.n_bootstrap, seed=linear_cfg.seed
    )
    sections.append(f"## Paired differences to {baseline}\n\n" + report.differences_table(diffs))
    report.write_json(Path(out_dir) / "differences.json", diffs)
  if retention:
    fingerprints = probe_retention(retention_files, task_specs, linear_cfg=linear_cfg)
    rows = retention_vs_both(fingerprints, n_bootstrap=linear_cfg.n_bootstrap, seed=linear_cfg.seed)
    sections.append("## Single-modality retention\n\n" + report.retention_table(rows, skipped))
    report.write_json(Path(out_dir) / "retention.json", {"rows": rows, "skipped": skipped})
    results = results + fingerprints
  report.write_comparison(results, out_dir, title=title, notes="\n\n".join(sections))
  return report.json_ready(results)


def differences_vs(
    results: Sequence[dict],
    baseline: str,
    *,
    n_bootstrap: int = probe_config.LINEAR_DEFAULTS.n_bootstrap,
    seed: int = probe_config.LINEAR_DEFAULTS.seed,
) -> list[dict[str, Any]]:
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
    diff = paired_vs(r, b, "difference", n_bootstrap=n_bootstrap, seed=seed)
    out.append(
        {
            "encoder": r["encoder"],
            "baseline": baseline,
            "task": r["task"],
            "kind": r["kind"],
            "difference": diff,
        }
    )
  return out


def paired_vs(r: dict, base: dict, combine: str, *, n_bootstrap: int, seed: int) -> dict:
  """`paired_statistic` of result `r` against result `base` (one task, same segments, both
  with their predictions kept): combine(metric(r), metric(base)) per metric."""
  if not (
      np.array_equal(r["targets"], base["targets"]) and np.array_equal(r["groups"], base["groups"])
  ):
    raise CompareError(
        f"task {r['task']}: {r['encoder']} and {base['encoder']} were scored on "
        "different targets"
    )
  return probe_metrics.paired_statistic(
      r["targets"],
      r["predictions"],
      base["predictions"],
      r["groups"],
      r["kind"],
      combine=combine,
      n_bootstrap=n_bootstrap,
      seed=seed,
  )


# ---- single-modality retention -------------------------------------------------------------------

# The fingerprints compared: each modality alone, then both (the reference of the ratios).
RETENTION_INPUTS = tuple((m,) for m in package_lib.MODALITIES) + (package_lib.MODALITIES,)


def fingerprint_name(encoder: str, modalities: Sequence[str]) -> str:
  """`m2ae`, ("ppg",) -> `m2ae:ppg` (the encoder name of that fingerprint's probe results)."""
  return f"{encoder}:{'+'.join(modalities)}"


def embed_retention(
    specs: Sequence[EncoderSpec], data_dir, out_dir, *, splits=None, reuse: bool = False
) -> tuple[dict[str, Path], dict[str, str]]:
  """For every encoder that takes both modalities, embeddings files of the windows having both,
  from each RETENTION_INPUTS; returns ({fingerprint name: file}, {skipped encoder: why})."""
  files: dict[str, Path] = {}
  skipped: dict[str, str] = {}
  taken = {s.name for s in specs}
  for spec in specs:
    paths = {
        fingerprint_name(spec.name, m): Path(out_dir)
        / "embeddings"
        / "retention"
        / spec.name
        / f"{'+'.join(m)}.npz"
        for m in RETENTION_INPUTS
    }
    clash = taken & set(paths)
    if clash:
      raise CompareError(
          f"encoder name {sorted(clash)[0]!r} is the name of {spec.name}'s "
          "retention fingerprint: rename it"
      )
    if reuse and all(p.is_file() for p in paths.values()):
      files.update(paths)
      continue
    try:
      enc = build_encoder(spec, package_lib.JOINT)
    except encoder_module.EncoderError as e:
      skipped[spec.name] = str(e)
      continue
    segs = embed_lib.dataset_segments(
        data_dir, package_lib.MODALITIES, splits, segment_length=enc.contract.segment_length
    )
    columns = {
        "meta": embed_lib.columns_from_dicts(segs.meta),
        "labels": embed_lib.columns_from_dicts(segs.labels),
    }
    for (name, path), modalities in zip(paths.items(), RETENTION_INPUTS):
      z = enc.embed_prepared(**{m: segs.signals[m] for m in modalities})
      info = {
          "model_name": str(enc.config.model.name),
          "modalities": list(modalities),
          "windows_with": list(package_lib.MODALITIES),
          "retention_of": spec.name,
          "input": str(Path(data_dir).absolute()),
          "notes": segs.notes,
      }
      embed_lib.save_embeddings(
          path, z, segs.subject_ids, segs.segment_ids, split=segs.split, info=info, **columns
      )
      files[name] = path
  if not files:
    why = "; ".join(f"{n}: {reason}" for n, reason in skipped.items())
    raise CompareError(f"retention: no encoder takes both ppg and ecg ({why})")
  return files, skipped


def probe_retention(
    files: dict[str, Path], task_specs, *, linear_cfg=probe_config.LinearProbeConfig()
) -> list[dict[str, Any]]:
  """The linear probe of every retention fingerprint (probe_all: one set of windows for all),
  predictions kept; each result also names `retention_of` (its encoder) and `inputs`."""
  results = probe_all(
      files, task_specs, protocols=("linear",), linear_cfg=linear_cfg, keep_predictions=True
  )
  for r in results:
    encoder, _, inputs = r["encoder"].rpartition(":")
    r.update(retention_of=encoder, inputs=inputs)
  return results


def retention_vs_both(
    results: Sequence[dict],
    *,
    n_bootstrap: int = probe_config.LINEAR_DEFAULTS.n_bootstrap,
    seed: int = probe_config.LINEAR_DEFAULTS.seed,
) -> list[dict[str, Any]]:
  """Per encoder and task: each one-modality fingerprint's metrics against the both-modality
  fingerprint's on the same segments (`ratio` and `difference`, every metric, paired
  subject-bootstrap CIs), with the three results' metrics (`values`) and the primary `metric`."""
  both_name = "+".join(package_lib.MODALITIES)
  by = {(r["retention_of"], r["inputs"], r["task"]): r for r in results if "retention_of" in r}
  rows = []
  for (encoder, inputs, task), both in by.items():
    if inputs != both_name:
      continue
    ones = {m: by[(encoder, m, task)] for (m,) in RETENTION_INPUTS[:-1]}
    rows.append(
        {
            "encoder": encoder,
            "task": task,
            "kind": both["kind"],
            "metric": report.primary_metric(both)[0],
            "n_segments": both["n_segments"],
            "n_subjects": both["n_subjects"],
            "values": {name: r["metrics"] for name, r in {**ones, both_name: both}.items()},
            **{
                combine: {
                    m: paired_vs(r, both, combine, n_bootstrap=n_bootstrap, seed=seed)
                    for m, r in ones.items()
                }
                for combine in probe_metrics.COMBINE
            },
        }
    )
  return rows
