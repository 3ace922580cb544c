"""xmae-embed on a folder of WFDB records writes each window's labels and derived meta."""

import math

import numpy as np

from xmae_jax.evaluation import embed as embed_lib


def test_embed_wfdb_folder_writes_alarm_labels_hr_and_pressures(
    tiny_package, physionet_dir, tmp_path
):
  from xmae_jax.cli import xmae_embed as embed

  folder = tmp_path / "records"
  folder.mkdir()
  for name in (
      "a103l.hea",
      "a103l.mat",
      "mixedsignals.hea",
      "mixedsignals_e.dat",
      "mixedsignals_p.dat",
      "mixedsignals_r.dat",
  ):
    (folder / name).symlink_to(physionet_dir / name)
  out = tmp_path / "emb.npz"
  assert (
      embed.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(folder),
              "--source",
              "wfdb",
              "--output",
              str(out),
          ]
      )
      == 0
  )
  a = embed_lib.load_embeddings(out)
  alarm = np.asarray(["/a103l/" in s for s in a["segment_ids"]])
  assert alarm.sum() > 20 and (~alarm).sum() > 10
  assert set(a["label.alarm_type"][alarm]) == {"Asystole"}
  assert set(a["label.alarm_type"][~alarm]) == {""}  # no header comments
  assert np.all(a["label.alarm_true"][alarm] == 0)
  assert np.all(np.isnan(a["label.alarm_true"][~alarm]))
  # the PPG encoder windows the PPG only; hr still comes from the record's ECG (NaN where its
  # window is unusable, as the notes count)
  hr = a["meta.hr"]
  assert np.isfinite(hr).sum() == a["info"]["notes"]["derived/hr"] > 0.9 * len(hr)
  assert np.all((hr[np.isfinite(hr)] > 40) & (hr[np.isfinite(hr)] < 200))
  assert np.all(np.isnan(a["meta.sbp"][alarm]))  # a103l has no ABP
  sbp, dbp = a["meta.sbp"][~alarm], a["meta.dbp"][~alarm]
  assert np.all((dbp > 40) & (dbp < sbp) & (sbp < 250))
  start, to_alarm = a["meta.window_start_s"][alarm], a["meta.seconds_to_alarm"][alarm]
  np.testing.assert_array_equal(to_alarm, 300.0 - (start + 10.0))
  assert to_alarm.min() < 0 < to_alarm.max()
  assert not any(math.isfinite(v) for v in a["meta.seconds_to_alarm"][~alarm])
