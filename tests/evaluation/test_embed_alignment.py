"""Raw-record embedding applies the PPG shift the encoder's training data were prepared with
(issue 21, item 5): a WFDB record embedded through the package equals the same record prepared
with that alignment and then embedded; which shift was applied is said in the output."""
import numpy as np
import pytest

from xmae_jax.data import prepare as prep
from xmae_jax.data import preprocess as pp
from xmae_jax.data.sources import synthetic
from xmae_jax.evaluation import embed as embed_lib
from xmae_jax.evaluation import encoder as encoder_lib

FS = 125
ALIGN = {"ppg_align_seconds": 0.15, "ppg_delay_seconds": 0.1}
F16 = 1e-3      # prepared windows are stored as float16: embeddings agree to about this


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  """One simulated subject (R-peak to pulse peak about 0.3-0.4 s) as a WFDB record."""
  import wfdb
  d = tmp_path_factory.mktemp("wfdb")
  rec = synthetic.simulate_subject(3, 1, minutes=1.5, fs=FS, pvc_subjects=0.0,
                                   artifact_rate=0.0)
  sig = np.stack([rec.signals["ecg"][0], rec.signals["ppg"][0]], 1)
  wfdb.wrsamp("rec01", fs=FS, units=["mV", "NU"], sig_name=["II", "PLETH"], p_signal=sig,
              fmt=["16", "16"], write_dir=str(d))
  return d


@pytest.fixture(scope="module")
def aligned_encoder(joint_package):
  enc = encoder_lib.load_encoder(joint_package)
  # the package as if exported from a model trained on data prepared with ALIGN
  enc.info["preprocessing"] = {**enc.info.get("preprocessing", {}), **ALIGN}
  return enc


def _prepared(record_dir, out, modalities: str, **alignment):
  config = pp.PreprocessConfig(modalities=modalities, **alignment)
  report = prep.prepare_dataset("wfdb", record_dir, out, config=config, test_frac=0,
                                val_frac=0, progress=False, log=None)
  return report


def _embedded(enc, path, out, modalities):
  summary = embed_lib.embed_input(enc, path, out, modalities=modalities)
  return summary, embed_lib.load_embeddings(out)


def test_joint_embedding_of_a_record_uses_the_per_record_alignment(aligned_encoder, record_dir,
                                                                   tmp_path):
  report = _prepared(record_dir, tmp_path / "ds", "both", **ALIGN)
  assert report["ppg_alignment"]["recordings_measured"] == 1
  assert report["ppg_alignment"]["mean_shift_s"] > 0.05      # the shift is not a no-op
  summary, raw = _embedded(aligned_encoder, record_dir, tmp_path / "raw.npz", ("ppg", "ecg"))
  _, ref = _embedded(aligned_encoder, tmp_path / "ds", tmp_path / "ref.npz", ("ppg", "ecg"))
  assert summary["notes"]["ppg_alignment"].startswith("per record")
  assert raw["info"]["notes"]["ppg_alignment"].startswith("per record")
  assert len(raw["embeddings"]) == len(ref["embeddings"]) > 0
  np.testing.assert_allclose(raw["embeddings"], ref["embeddings"], atol=F16)
  np.testing.assert_allclose(raw["meta.ppg_shift_s"], report["ppg_alignment"]["mean_shift_s"],
                             atol=1e-4)
  # without the package's alignment the record's fingerprints differ (what the issue saw)
  plain = encoder_lib.load_encoder(aligned_encoder.info["path"])
  plain.info["preprocessing"] = {}
  summary, unaligned = _embedded(plain, record_dir, tmp_path / "plain.npz", ("ppg", "ecg"))
  assert summary["notes"]["ppg_alignment"] == "none"
  n = len(ref["embeddings"])         # the shifted PPG is shorter: fewer windows
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
  assert embed_lib.ppg_alignment({"ppg_delay_seconds": 0.0, "ppg_align_seconds": None}) == {}
  assert embed_lib.ppg_alignment({"ppg_delay_seconds": 0.2, "ppg_align_seconds": 0.35}) == {
      "ppg_delay_seconds": 0.2, "ppg_align_seconds": 0.35}
  assert embed_lib.ppg_alignment(None) == {}
