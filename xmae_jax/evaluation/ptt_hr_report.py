"""The xMAE paper's timing claim as a measurement: can pulse-transit time and heart rate be read
linearly from each model's frozen PPG embeddings?

The paper states that "ECG-PPG timing structure is reflected in the learned PPG
representations" (the abstract of Zhou et al., arXiv:2605.00973); its method and numbers are not
public. This report measures it the way the rest of the evaluation does: the linear probe
(nested subject-grouped CV) predicts each segment's PTT (R-peak to pulse foot, ms) and heart
rate (bpm) from the PPG embedding, for every encoder on identical folds, with

  * MAE, R^2 and Pearson r with subject-bootstrap 95% CIs;
  * a shuffled-target control per encoder (targets permuted across segments: what a probe finds
    in noise, the floor every encoder must clear);
  * paired differences to a baseline encoder (the randomly initialized one by default), with a
    paired subject-bootstrap CI: "pretraining beats random init" is claimed only where that CI
    excludes zero.
PTT needs labelled data: the synthetic source records it per window (`meta.ptt_ms`). On
MIMIC-derived data the ECG-PPG delay can carry unknown channel offsets (notes §9), so absolute
PTT there is not trustworthy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xmae_jax.evaluation import compare as compare_lib
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import probe as probe_lib
from xmae_jax.evaluation import probe_config
from xmae_jax.evaluation import report as report_lib
from xmae_jax.evaluation import tasks as tasks_lib

TIMING_TASKS = ("ptt", "hr")


def shuffled_control(
    arrays: dict, task: str, cfg: probe_config.LinearProbeConfig
) -> dict[str, Any]:
  """The linear probe on targets permuted across segments (seeded): the chance level."""
  fields = tasks_lib.fields_from_arrays(arrays)
  y, keep, t = tasks_lib.targets(task, fields)
  rng = np.random.default_rng(cfg.seed + 1)
  y_perm = rng.permutation(y[keep])
  return probe_lib.linear_probe(
      arrays["embeddings"][keep], y_perm, arrays["subject_ids"][keep], t.kind, cfg
  )


def timing_report(
    specs: Sequence[compare_lib.EncoderSpec],
    data_dir,
    out_dir,
    *,
    baseline: str | None = None,
    splits=None,
    tasks=TIMING_TASKS,
    linear_cfg=probe_config.LinearProbeConfig(),
    reuse_embeddings: bool = False,
    controls: bool = True,
) -> dict[str, Any]:
  """Embeds, probes PTT and HR, adds controls and paired differences.

  Writes timing.{md,json,png}.
  """
  compare_lib.check_baseline(specs, baseline)
  out = Path(out_dir)
  files = compare_lib.embed_all(
      specs, data_dir, out, modality="ppg", splits=splits, reuse=reuse_embeddings
  )
  results = compare_lib.probe_all(files, list(tasks), linear_cfg=linear_cfg, keep_predictions=True)
  control_rows = []
  if controls:
    for name, f in files.items():
      arrays = embed_lib.load_embeddings(f)
      for task in tasks:
        r = shuffled_control(arrays, task, linear_cfg)
        control_rows.append({"encoder": name, "task": task, "metrics": r["metrics"]})
  diffs = (
      compare_lib.differences_vs(
          results, baseline, n_bootstrap=linear_cfg.n_bootstrap, seed=linear_cfg.seed
      )
      if baseline
      else []
  )
  report = {
      "results": report_lib.json_ready(results),
      "controls": control_rows,
      "differences": diffs,
      "baseline": baseline,
      "tasks": list(tasks),
      "probe": dataclasses.asdict(linear_cfg),
  }
  report_lib.write_timing(report, results, out)
  return report
