"""xmae-recon-report reads raw records for a model with the PPG shift its training data were
prepared with (issue 21, item 5): the windows it reconstructs from a WFDB record are the windows
xmae-prepare makes of that record with the same `--ppg-align-seconds` / `--ppg-delay-seconds`,
and the report says which shift was applied."""

import copy
import json

import numpy as np
import pytest

from tests.helpers.tiny_models import write_workdir
from xmae_jax.data import prepare as prep
from xmae_jax.data import preprocess as pp
from xmae_jax.data.sources import synthetic
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import recon_windows
from xmae_jax.evaluation import reconstruction as recon

FS = 125
LATE_S = 0.2  # the record's PPG lags its ECG this much beyond the simulated pulse transit
ALIGN = {"ppg_align_seconds": 0.15, "ppg_delay_seconds": 0.1}
F16 = 1e-3  # prepared windows are stored as float16


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  """One simulated subject as a WFDB record, its PPG delayed by LATE_S."""
  import wfdb

  d = tmp_path_factory.mktemp("wfdb")
  rec = synthetic.simulate_subject(4, 1, minutes=1.5, fs=FS, pvc_subjects=0.0, artifact_rate=0.0)
  ecg, ppg = rec.signals["ecg"][0], rec.signals["ppg"][0]
  late = int(LATE_S * FS)
  ppg = np.concatenate([np.full(late, ppg[0]), ppg[:-late]])
  wfdb.wrsamp(
      "rec01",
      fs=FS,
      units=["mV", "NU"],
      sig_name=["II", "PLETH"],
      p_signal=np.stack([ecg, ppg], 1),
      fmt=["16", "16"],
      write_dir=str(d),
  )
  return d


@pytest.fixture(scope="module")
def prepared(record_dir, tmp_path_factory):
  """(dataset dir, prepare report) of the record prepared with ALIGN."""
  out = tmp_path_factory.mktemp("prepared") / "ds"
  report = prep.prepare_dataset(
      "wfdb",
      record_dir,
      out,
      config=pp.PreprocessConfig(modalities="both", **ALIGN),
      test_frac=0,
      val_frac=0,
      progress=False,
      log=None,
  )
  return out, report


@pytest.fixture(scope="module")
def aligned_workdir(tiny_xmae, prepared, tmp_path_factory):
  """A workdir whose saved config trained on the prepared dataset (so on ALIGN)."""
  model, config = tiny_xmae
  config = copy.deepcopy(config)
  config.data.dir = str(prepared[0])
  return write_workdir(tmp_path_factory, (model, config), step=7)


def test_raw_record_windows_are_the_prepared_windows(aligned_workdir, prepared, record_dir):
  from xmae_jax.training import model_checkpoint

  _, config = model_checkpoint.load_model(aligned_workdir)
  alignment = recon_windows.model_alignment(config)
  assert alignment == ALIGN
  assert prepared[1]["ppg_alignment"]["recordings_measured"] == 1
  assert prepared[1]["ppg_alignment"]["mean_shift_s"] > LATE_S  # not a no-op
  contract = encoder_lib.Contract.from_config(config)
  ppg, ecg, _, notes = recon_windows.paired_segments(
      record_dir, contract=contract, alignment=alignment
  )
  ref_ppg, ref_ecg, _, _ = recon_windows.paired_segments(
      prepared[0], contract=contract, split="all"
  )
  assert notes["ppg_alignment"].startswith("per record")
  assert len(ppg) == len(ref_ppg) > 0
  np.testing.assert_allclose(ppg, ref_ppg, atol=F16)
  np.testing.assert_allclose(ecg, ref_ecg, atol=F16)
  # read as recorded, the PPG windows are not the ones the model trained on
  plain_ppg, _, _, plain_notes = recon_windows.paired_segments(record_dir, contract=contract)
  assert plain_notes["ppg_alignment"] == "none"
  n = len(ref_ppg)
  assert np.abs(plain_ppg[:n] - ref_ppg).max() > 0.1


def test_report_reconstructs_the_aligned_windows_and_says_so(
    aligned_workdir, tiny_workdir, record_dir, tmp_path
):
  from xmae_jax.cli import xmae_recon_report as cli
  from xmae_jax.training import model_checkpoint

  out = tmp_path / "out"
  assert (
      cli.main(
          [
              "--model",
              f"aligned={aligned_workdir}",
              "--model",
              f"plain={tiny_workdir}",
              "--wfdb",
              f"rec={record_dir}",
              "--output-dir",
              str(out),
          ]
      )
      == 0
  )
  report = json.loads((out / "reconstruction.json").read_text())
  rows = {r["name"]: r for r in report["rows"]}
  assert rows["aligned"]["notes"]["ppg_alignment"].startswith(
      "per record: PPG moved so that " "R-peak to pulse peak is 0.15 s"
  )
  assert rows["plain"]["notes"]["ppg_alignment"] == "none"
  assert "per record: PPG moved" in (out / "reconstruction.md").read_text()
  # the aligned row scores exactly the record's aligned windows
  model, config = model_checkpoint.load_model(aligned_workdir)
  contract = encoder_lib.Contract.from_config(config)
  ppg, ecg, subjects, _ = recon_windows.paired_segments(
      record_dir, contract=contract, alignment=recon_windows.model_alignment(config)
  )
  expected = recon.evaluate(model, config, ppg, ecg, fs=contract.sampling_rate, groups=subjects)
  np.testing.assert_equal(rows["aligned"]["reconstruction"], expected["reconstruction"])
  assert rows["aligned"]["reconstruction"]["segments"] == len(ppg)
  assert rows["plain"]["reconstruction"]["segments"] > len(ppg)  # the unshifted PPG is longer


def test_a_model_whose_dataset_is_gone_gets_an_unknown_shift_not_none(
    tiny_xmae, tiny_workdir, record_dir, tmp_path, tmp_path_factory
):
  """ "none" says the model trained without a shift; with its dataset's manifest gone the report
  cannot tell, and says so."""
  from xmae_jax.cli import xmae_recon_report as cli
  from xmae_jax.training import model_checkpoint

  model, config = tiny_xmae
  config = copy.deepcopy(config)
  config.data.dir = str(tmp_path / "deleted_dataset")
  gone = write_workdir(tmp_path_factory, (model, config), step=7)
  assert recon_windows.model_alignment(model_checkpoint.load_model(gone)[1]) is None
  assert recon_windows.model_alignment(model_checkpoint.load_model(tiny_workdir)[1]) == {}
  out = tmp_path / "out"
  argv = ["--model", f"gone={gone}", "--model", f"plain={tiny_workdir}"]
  assert cli.main([*argv, "--wfdb", f"rec={record_dir}", "--output-dir", str(out)]) == 0
  rows = {r["name"]: r for r in json.loads((out / "reconstruction.json").read_text())["rows"]}
  assert rows["gone"]["notes"]["ppg_alignment"].startswith("unknown (the manifest of the model's")
  assert rows["plain"]["notes"]["ppg_alignment"] == "none"
  assert "unknown (the manifest" in (out / "reconstruction.md").read_text()
  # read as recorded, like the plain model's windows
  assert rows["gone"]["reconstruction"]["segments"] == rows["plain"]["reconstruction"]["segments"]
