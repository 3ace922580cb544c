"""Raw-record embedding applies the PPG shift the encoder's training data were prepared with
(issue 21, item 5): a WFDB record embedded through the package equals the same record prepared
with that alignment and then embedded, and equals the record given to `embed` as arrays; which
shift was applied is said in the output."""

import numpy as np
import pytest

from xmae_jax.data import prepare as prep
from xmae_jax.data import preprocess as pp
from xmae_jax.data.sources import synthetic
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib

FS = 125
ALIGN = {"ppg_align_seconds": 0.15, "ppg_delay_seconds": 0.1}
F16 = 1e-3  # prepared windows are stored as float16: embeddings agree to about this


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  """One simulated subject (R-peak to pulse peak about 0.3-0.4 s) as a WFDB record."""
  import wfdb

  d = tmp_path_factory.mktemp("wfdb")
  rec = synthetic.simulate_subject(3, 1, minutes=1.5, fs=FS, pvc_subjects=0.0, artifact_rate=0.0)
  sig = np.stack([rec.signals["ecg"][0], rec.signals["ppg"][0]], 1)
  wfdb.wrsamp(
      "rec01",
      fs=FS,
      units=["mV", "NU"],
      sig_name=["II", "PLETH"],
      p_signal=sig,
      fmt=["16", "16"],
      write_dir=str(d),
  )
  return d


@pytest.fixture(scope="module")
def aligned_encoder(joint_package):
  enc = encoder_lib.load_encoder(joint_package)
  # the package as if exported from a model trained on data prepared with ALIGN
  enc.info["preprocessing"] = {**enc.info.get("preprocessing", {}), **ALIGN}
  return enc


def _prepared(record_dir, out, modalities: str, **alignment):
  config = pp.PreprocessConfig(modalities=modalities, **alignment)
  report = prep.prepare_dataset(
      "wfdb", record_dir, out, config=config, test_frac=0, val_frac=0, progress=False, log=None
  )
  return report


def _embedded(enc, path, out, modalities):
  summary = embed_lib.embed_input(enc, path, out, modalities=modalities)
  return summary, embed_lib.load_embeddings(out)


def test_joint_embedding_of_a_record_uses_the_per_record_alignment(
    aligned_encoder, record_dir, tmp_path
):
  report = _prepared(record_dir, tmp_path / "ds", "both", **ALIGN)
  assert report["ppg_alignment"]["recordings_measured"] == 1
  assert report["ppg_alignment"]["mean_shift_s"] > 0.05  # the shift is not a no-op
  summary, raw = _embedded(aligned_encoder, record_dir, tmp_path / "raw.npz", ("ppg", "ecg"))
  _, ref = _embedded(aligned_encoder, tmp_path / "ds", tmp_path / "ref.npz", ("ppg", "ecg"))
  assert summary["notes"]["ppg_alignment"].startswith("per record")
  assert raw["info"]["notes"]["ppg_alignment"].startswith("per record")
  assert len(raw["embeddings"]) == len(ref["embeddings"]) > 0
  np.testing.assert_allclose(raw["embeddings"], ref["embeddings"], atol=F16)
  np.testing.assert_allclose(
      raw["meta.ppg_shift_s"], report["ppg_alignment"]["mean_shift_s"], atol=1e-4
  )
  # without the package's alignment the record's fingerprints differ (what the issue saw)
  plain = encoder_lib.load_encoder(aligned_encoder.info["path"])
  plain.info["preprocessing"] = {}
  summary, unaligned = _embedded(plain, record_dir, tmp_path / "plain.npz", ("ppg", "ecg"))
  assert summary["notes"]["ppg_alignment"] == "none"
  n = len(ref["embeddings"])  # the shifted PPG is shorter: fewer windows
  assert np.abs(unaligned["embeddings"][:n] - ref["embeddings"]).max() > 20 * F16


def test_ppg_alone_gets_the_fixed_delay_and_says_so(aligned_encoder, record_dir, tmp_path):
  _prepared(record_dir, tmp_path / "ds", "ppg", ppg_delay_seconds=ALIGN["ppg_delay_seconds"])
  summary, raw = _embedded(aligned_encoder, record_dir, tmp_path / "raw.npz", ("ppg",))
  _, ref = _embedded(aligned_encoder, tmp_path / "ds", tmp_path / "ref.npz", ("ppg",))
  note = summary["notes"]["ppg_alignment"]
  assert note.startswith("fixed: PPG moved 0.1 s earlier") and "needs the ECG" in note
  assert len(raw["embeddings"]) == len(ref["embeddings"]) > 0
  np.testing.assert_allclose(raw["embeddings"], ref["embeddings"], atol=F16)


def test_the_alignment_comes_from_the_recorded_preprocessing():
  assert pp.ppg_alignment({"ppg_delay_seconds": 0.0, "ppg_align_seconds": None}) == {}
  assert pp.ppg_alignment({"ppg_delay_seconds": 0.2, "ppg_align_seconds": 0.35}) == {
      "ppg_delay_seconds": 0.2,
      "ppg_align_seconds": 0.35,
  }
  assert pp.ppg_alignment(None) == {}


def _arrays(record_dir):
  """(ecg, ppg) of the record as 1-D arrays, as a user reads it."""
  import wfdb

  rec = wfdb.rdrecord(str(record_dir / "rec01"))
  return rec.p_signal[:, 0], rec.p_signal[:, 1]


@pytest.mark.parametrize("modalities", [("ppg", "ecg"), ("ppg",)])
def test_a_record_given_as_arrays_embeds_as_its_wfdb_files(
    aligned_encoder, record_dir, tmp_path, modalities
):
  ecg, ppg = _arrays(record_dir)
  given = {"ppg": ppg, "ecg": ecg} if "ecg" in modalities else {"ppg": ppg}
  summary, files = _embedded(aligned_encoder, record_dir, tmp_path / "raw.npz", modalities)
  r = aligned_encoder.embed(fs=FS, **given)
  assert isinstance(r, encoder_lib.WindowEmbeddings)
  assert r.alignment == aligned_encoder.last_alignment
  assert r.alignment.startswith(summary["notes"]["ppg_alignment"])
  assert r.alignment.endswith("rows: 1 measured" if "ecg" in modalities else "rows: 1 fixed")
  np.testing.assert_array_equal(r.start_s, files["meta.start_s"])
  np.testing.assert_allclose(r.ppg_shift_s, files["meta.ppg_shift_s"], atol=1e-4)
  np.testing.assert_allclose(r.embeddings, files["embeddings"], atol=1e-5)
  # recordings as rows of one array: each row is aligned on its own, as a record is
  rows = aligned_encoder.embed(fs=FS, **{m: np.stack([x, x]) for m, x in given.items()})
  np.testing.assert_allclose(rows, np.stack([files["embeddings"].mean(0)] * 2), atol=1e-5)
  assert aligned_encoder.last_alignment.endswith(
      ": 2 measured" if "ecg" in modalities else ": 2 fixed"
  )
  as_given = aligned_encoder.embed(fs=FS, align=False, **given)
  assert as_given.alignment == "none" and not as_given.ppg_shift_s.any()
  n = len(r)  # the shifted PPG is shorter: fewer windows
  assert np.abs(as_given.embeddings[:n] - r.embeddings).max() > 20 * F16


def test_rows_too_short_for_the_shift_or_prepared_are_embedded_as_given(
    aligned_encoder, record_dir
):
  ecg, ppg = _arrays(record_dir)
  one_window = {"ppg": ppg[None, : 10 * FS], "ecg": ecg[None, : 10 * FS]}
  z = aligned_encoder.embed(fs=FS, **one_window)
  note = aligned_encoder.last_alignment
  assert note.endswith("rows: 1 kept as given (shorter than a window plus the shift)"), note
  np.testing.assert_array_equal(z, aligned_encoder.embed(fs=FS, align=False, **one_window))
  windows = {m: pp.minmax(x[:, :1000]) for m, x in one_window.items()}  # contract-shaped
  aligned_encoder.embed(**windows)
  assert aligned_encoder.last_alignment == "none (rows taken as prepared windows)"
