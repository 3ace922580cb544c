"""`xmae-prepare` as a library: raw recordings -> a dataset directory (shards, index, manifest).

    report = prepare_dataset("synthetic", None, "data/demo", workers=2, seed=77)

Two runners make the same dataset directory from the same per-input work
(`prepare_units.process_unit`), subject split (`prepare_split`), output rules
(`prepare_rules`), manifest and report (`prepare_report`): "local", a resumable process pool on
this machine (`prepare_local`), and "beam", an Apache Beam pipeline (`beam`) for inputs larger
than one machine. A directory holding a dataset (or an unfinished run) of another request
(inputs, reader options, preprocessing, split, shard size) is refused unless `overwrite`, so a
mistyped --output cannot replace a dataset. Bad input never stops a run: a unit that fails is
skipped with its reason; but a run that keeps no segment at all is an error listing the first
reasons. A request whose size is known before listing (the simulator's) is checked up front
against the output's free space and this machine's memory (`prepare_units.check_size`).
"""

from __future__ import annotations

import json
import os
from typing import Any

from xmae_jax import paths
from xmae_jax.data import beam
from xmae_jax.data import dataset_verify
from xmae_jax.data import prepare_local
from xmae_jax.data import prepare_rules as rules
from xmae_jax.data import preprocess as pp
from xmae_jax.data import shards

RUNNERS = ("local", "beam")


def prepare_dataset(
    source: str,
    input: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    workers: int = 1,
    seed: int = 0,
    test_frac: float = 0.05,
    val_frac: float = 0.05,
    config: pp.PreprocessConfig | None = None,
    source_options: dict[str, Any] | None = None,
    records_per_shard: int = 4096,
    progress: bool = True,
    runner: str = "local",
    beam_options: str | None = None,
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
  """Prepares one dataset directory; returns the closing report (also written into it).

  runner "local" runs a process pool of `workers` on this machine
  (`prepare_local.prepare_local`); "beam" runs the same per-input function as an Apache Beam
  pipeline (`beam.prepare_dataset_beam`, options from the `beam_options` string).

  An output that holds a dataset (or an unfinished run) made from other inputs or settings is
  refused unless `overwrite`; a re-run of the same request resumes it. Raises PrepareError
  when no segment at all was kept (the output is left as it was, apart from the cache).
  """
  if runner not in RUNNERS:
    raise rules.PrepareError(f"unknown runner {runner!r} (choose from {', '.join(RUNNERS)})")
  if records_per_shard < 1:
    raise rules.PrepareError(f"--records-per-shard must be >= 1, got {records_per_shard}")
  if runner == "beam":
    return beam.prepare_dataset_beam(
        source,
        input,
        output,
        seed=seed,
        test_frac=test_frac,
        val_frac=val_frac,
        config=config,
        source_options=source_options,
        records_per_shard=records_per_shard,
        beam_options=beam_options,
        overwrite=overwrite,
        log=log,
    )
  if beam_options:
    raise rules.PrepareError("--beam-options applies only to --runner beam")
  # Readers open local files (WFDB headers beside their signals, EDF, CSV): a gs:// input is
  # copied to a local mirror first (refreshed object by object on a rerun); the request keeps
  # the URL, so a rerun of the same command resumes.
  named = input
  if input is not None and paths.is_remote(input):
    input = paths.local_mirror(input, "input")
  local = lambda out: prepare_local.prepare_local(
      source,
      input,
      out,
      input_name=named,
      workers=workers,
      seed=seed,
      test_frac=test_frac,
      val_frac=val_frac,
      config=config,
      source_options=source_options,
      records_per_shard=records_per_shard,
      progress=progress,
      overwrite=overwrite,
      log=log,
  )
  if paths.is_remote(output):
    return _prepare_remote(output, overwrite, local)
  return local(output)


def _prepare_remote(output, overwrite: bool, prepare_into) -> dict[str, Any]:
  """A gs:// output of the local runner: ArrayRecord writes local files, so the dataset is
  prepared in a local staging folder (`paths.cache_folder`; its cache lets a rerun resume, and
  its lock guards the run) by `prepare_into(folder)`, then uploaded one object per file, the
  manifest last: a reader never finds a manifest naming shards not uploaded yet. The output is
  tried before any work; a dataset of other settings there is refused unless `overwrite`,
  before anything is uploaded."""
  remote = paths.check_writable(output, "output")
  staged = paths.cache_folder(output, "staging")
  report = prepare_into(staged)
  manifest = (staged / shards.MANIFEST).read_bytes()
  if not overwrite and (remote / shards.MANIFEST).is_file():
    rules.compare_request(
        paths.text(output),
        json.loads(manifest).get("request") or {},
        manifest=(remote / shards.MANIFEST).read_bytes(),
    )
  for f in sorted(staged.iterdir()):
    if f.name not in (rules.WORK, shards.MANIFEST):
      paths.upload(f, remote / f.name)
  paths.upload(staged / shards.MANIFEST, remote / shards.MANIFEST)
  return report


def verify(data_dir: str | os.PathLike, *, log=print) -> list:
  """`xmae-prepare --verify DIR`: logs one verdict line per part
  (`dataset_verify.verify_dataset`); raises PrepareError naming the first problem (shard and
  record) when any part failed."""
  verdicts = dataset_verify.verify_dataset(data_dir)
  for v in verdicts:
    if log:
      log(v.line())
  failed = [v for v in verdicts if not v.ok]
  if failed:
    total = sum(v.problem_count for v in failed)
    raise rules.PrepareError(
        f"{data_dir} failed verification ({total} problem(s) in "
        f"{', '.join(v.part for v in failed)}); "
        f"first: {failed[0].problems[0]}"
    )
  return verdicts
