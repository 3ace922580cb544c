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
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xmae_jax import config_lib
from xmae_jax.errors import XmaeError
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import report
from xmae_jax.evaluation import tasks as tasks_lib


class CompareError(XmaeError):
  """A comparison that cannot run as asked (bad encoder spec, duplicate names, no tasks)."""


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  name: str
  path: str = ""                  # package or workdir
  random_config: str = ""         # CONFIG_FILE[:ARG] for a randomly initialized encoder
  seed: int = 0
  step: str = "auto"


def parse_named(text: str, what: str, expected: str = "NAME=PATH") -> tuple[str, str]:
  """`NAME=VALUE` -> (name, value); both must be non-empty."""
  name, sep, value = text.partition("=")
  if not sep or not name or not value:
    raise CompareError(f"{what} {text!r}: expected {expected}")
  return name, value


def parse_spec(text: str, *, random: bool = False, seed: int = 0, step: str = "auto") -> EncoderSpec:
  name, value = parse_named(text, "encoder", "NAME=PATH" + (
      " (NAME=CONFIG_FILE[:ARG] for --random)" if random else ""))
  if random:
    return EncoderSpec(name=name, random_config=value, seed=seed)
  return EncoderSpec(name=name, path=value, step=step)


def encoder_specs(encoders: Sequence[str] = (), randoms: Sequence[str] = (), *,
                  step: str = "auto", seed: int = 0) -> list[EncoderSpec]:
  """The specs of `NAME=PATH` encoders and `NAME=CONFIG` randomly initialized ones, in order."""
  return ([parse_spec(s, step=step) for s in encoders]
          + [parse_spec(s, random=True, seed=seed) for s in randoms])


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
  task_specs = probe_lib.resolve_tasks(task_specs, fields)
  results = []
  for name, a in arrays.items():
    for r in probe_lib.run_tasks(a["embeddings"], a["subject_ids"], fields, task_specs,
                                 protocols=protocols, linear_cfg=linear_cfg, xmae_cfg=xmae_cfg,
                                 keep_predictions=keep_predictions):
      results.append({"encoder": name, **r})
  return results


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
  check_baseline(specs, baseline)
  files = embed_all(specs, data_dir, out_dir, modality=modality, splits=splits,
                    reuse=reuse_embeddings)
  results = probe_all(files, task_specs, protocols=protocols, linear_cfg=linear_cfg,
                      xmae_cfg=xmae_cfg, keep_predictions=baseline is not None)
  if baseline is not None:
    diffs = differences_vs(results, baseline, n_bootstrap=linear_cfg.n_bootstrap, seed=linear_cfg.seed)
    notes = (notes + "\n\n" if notes else "") + f"## Paired differences to {baseline}\n\n" + \
        report.differences_table(diffs)
    report.write_json(Path(out_dir) / "differences.json", diffs)
  report.write_comparison(results, out_dir, title=title, notes=notes)
  return report.json_ready(results)


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
