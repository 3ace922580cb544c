"""The downstream user's own data: a long recording embedded per window with start times, label
columns as probe tasks (`label:NAME[:classification|regression]`), and a CSV + labels file
prepared, embedded with a tiny package and probed on a label column end to end."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.helpers import datasets
from xmae_jax.evaluation import encoder as encoder_lib
from xmae_jax.evaluation import tasks as tasks_lib


# ---------------------------------------------------------------------------------------------
# embed: one recording -> one embedding per window
# ---------------------------------------------------------------------------------------------
def test_one_recording_is_embedded_per_window_with_start_times(tiny_package):
  enc = encoder_lib.load_encoder(tiny_package, batch_size=2)  # one compiled batch shape
  windows, _ = datasets.paired_windows(n=3)
  recording = np.concatenate([*windows, windows[0][:450]])  # 34.5 s at 100 Hz, 1-D
  r = enc.embed(recording, clean=False)
  assert isinstance(r, encoder_lib.WindowEmbeddings) and len(r) == 3  # the 4.5-s tail: none
  np.testing.assert_array_equal(r.start_s, [0.0, 10.0, 20.0])
  np.testing.assert_array_equal(r.row, [0, 0, 0])
  assert r.window_s == 10.0 and r.embeddings.shape == (3, enc.latent_dim)
  np.testing.assert_allclose(r.embeddings, enc.embed(windows), atol=1e-5)  # each window its own
  # the old one-row-per-input result, asked for: the mean of the windows
  mean = enc.embed(recording, clean=False, per_window=False)
  assert mean.shape == (1, enc.latent_dim)
  np.testing.assert_allclose(mean[0], r.embeddings.mean(0), atol=1e-5)
  # (N, L) rows per window: rows and start times of every row; by keyword as well
  two = np.stack([recording[:2000], recording[1000:3000]])
  r2 = enc.embed(ppg=two, clean=False, per_window=True)
  np.testing.assert_array_equal(r2.row, [0, 0, 1, 1])
  np.testing.assert_array_equal(r2.start_s, [0.0, 10.0, 0.0, 10.0])
  np.testing.assert_allclose(r2.embeddings[1], r2.embeddings[2], atol=1e-5)  # the same window
  assert enc.embed(two, clean=False).shape == (2, enc.latent_dim)  # unchanged
  # a raw recording at another rate: windows of the contract's 10 s of it
  at_250 = np.interp(np.arange(8000) / 2.5, np.arange(len(recording)), recording)
  r3 = enc.embed(at_250, fs=250, clean=False)
  np.testing.assert_array_equal(r3.start_s, [0.0, 10.0, 20.0])
  with pytest.raises(encoder_lib.EncoderInputError, match="shorter than one"):
    enc.embed(recording[:500])


# ---------------------------------------------------------------------------------------------
# label:NAME tasks
# ---------------------------------------------------------------------------------------------
FIELDS = {
    "rhythm": np.array(["AF", "normal", "AF", "", "normal", "AF"]),
    "score": np.array([1.5, 2.25, 3.0, np.nan, 7.1, 0.2]),
    "grade": np.array([1.0, 2.0, 3.0, 2.0, np.nan, 3.0]),
    "flag": np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0]),
    "age": np.array([20.0, 31.0, 42.0, 53.0, 64.0, 75.0]),
}


@pytest.mark.parametrize(
    "spec,kind,y,description",
    [
        (
            "label:rhythm",
            tasks_lib.CLASSIFICATION,
            [0, 1, 0, np.nan, 1, 0],
            "normal (1) vs AF (0) (classification, inferred: text values)",
        ),
        (
            "label:score",
            tasks_lib.REGRESSION,
            [1.5, 2.25, 3.0, np.nan, 7.1, 0.2],
            "regression, inferred: 5 distinct numbers",
        ),
        (
            "label:grade",
            tasks_lib.MULTICLASS,
            [0, 1, 2, 1, np.nan, 2],
            "3 classes (classification, inferred: 3 distinct integer values)",
        ),
        ("label:grade:regression", tasks_lib.REGRESSION, [1, 2, 3, 2, np.nan, 3], "asked for"),
        ("label:flag", tasks_lib.CLASSIFICATION, [0, 1, 1, 0, 1, 0], "1 (1) vs 0 (0)"),
        ("label:age:classification", tasks_lib.MULTICLASS, [0, 1, 2, 3, 4, 5], "6 classes"),
    ],
)
def test_label_column_tasks(spec, kind, y, description):
  got, keep, task = tasks_lib.targets(spec, FIELDS)
  assert task.kind == kind and description in task.description
  np.testing.assert_array_equal(got, np.asarray(y, float))
  np.testing.assert_array_equal(keep, np.isfinite(np.asarray(y, float)))
  assert tasks_lib.canonical_name(spec) == spec
  if kind == tasks_lib.MULTICLASS:
    names = tasks_lib.class_names(spec, FIELDS)
    assert names == (["1", "2", "3"] if "grade" in spec else ["20", "31", "42", "53", "64", "75"])


def test_integer_labels_with_many_values_are_regression():
  ages = {"age": np.arange(20, 20 + tasks_lib.MAX_INFERRED_CLASSES + 1, dtype=float)}
  assert tasks_lib.targets("label:age", ages)[2].kind == tasks_lib.REGRESSION
  assert tasks_lib.targets("label:age", {"age": ages["age"][:-1]})[2].kind == tasks_lib.MULTICLASS


@pytest.mark.parametrize(
    "spec,message",
    [
        ("label:nope", r"task label:nope: the data carry no column 'nope' \(columns: age, flag, "),
        ("label:rhythm:regression", r"column 'rhythm' holds text \(e.g. 'AF'\), not numbers"),
        ("label:rhythm:ordinal", r"kind 'ordinal' is not classification or regression"),
        ("label:", r"names no column: use label:NAME\[:classification\|regression\]"),
    ],
)
def test_label_task_errors_are_one_line(spec, message):
  with pytest.raises(tasks_lib.TaskError, match=message) as e:
    tasks_lib.targets(spec, FIELDS)
  assert "\n" not in str(e.value)


def test_probe_cli_rejects_a_missing_label_column(tmp_path, capsys):
  from xmae_jax.cli import xmae_probe
  from xmae_jax.evaluation import embed as embed_lib

  path = embed_lib.save_embeddings(
      tmp_path / "e.npz",
      np.zeros((4, 3)),
      list("aabb"),
      list("0123"),
      labels={"af": np.array([0, 1, 0, 1])},
  )
  assert xmae_probe.main(["--embeddings", str(path), "--task", "label:afib"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "no column 'afib' (columns: af)" in err


# ---------------------------------------------------------------------------------------------
# End to end: the user's CSV recordings + a labels file -> prepare -> embed -> probe
# ---------------------------------------------------------------------------------------------
def test_csv_with_labels_file_is_probed_on_a_label_column(tiny_package, tmp_path, capsys):
  import neurokit2 as nk

  from xmae_jax.cli import xmae_embed
  from xmae_jax.cli import xmae_prepare
  from xmae_jax.cli import xmae_probe
  from xmae_jax.evaluation import embed as embed_lib

  recordings = tmp_path / "mine"
  recordings.mkdir()
  rows = []
  for k in range(8):  # 8 people, one 30-s recording each; "tachy" goes with the rate
    tachy = k % 2
    hr = (110 if tachy else 60) + 3 * k
    pd.DataFrame(
        {
            "ECG": nk.ecg_simulate(
                duration=30, sampling_rate=125, heart_rate=hr, random_state=k, method="simple"
            ),
            "Pleth": nk.ppg_simulate(duration=30, sampling_rate=125, heart_rate=hr, random_state=k),
        }
    ).to_csv(recordings / f"person{k}.csv", index=False)
    rows.append({"record": f"person{k}", "tachy": tachy, "rate": hr})
  pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
  data, emb = tmp_path / "data", tmp_path / "emb.npz"
  assert (
      xmae_prepare.main(
          [
              "--source",
              "csv",
              "--input",
              str(recordings),
              "--fs",
              "125",
              "--ppg-column",
              "pleth",
              "--labels",
              str(tmp_path / "labels.csv"),
              "--output",
              str(data),
              "--workers",
              "1",
              "--no-progress",
          ]
      )
      == 0
  )
  assert (
      xmae_embed.main(["--encoder", str(tiny_package), "--input", str(data), "--output", str(emb)])
      == 0
  )
  out_json = tmp_path / "probe.json"
  capsys.readouterr()
  assert (
      xmae_probe.main(
          [
              "--embeddings",
              str(emb),
              "--task",
              "label:tachy",
              "--task",
              "label:rate:regression",
              "--folds",
              "2",
              "--bootstrap",
              "20",
              "--output-json",
              str(out_json),
          ]
      )
      == 0
  )
  printed = capsys.readouterr().out
  results = {r["task"]: r for r in json.loads(out_json.read_text())}
  assert set(results) == {"label:tachy", "label:rate:regression"}
  tachy = results["label:tachy"]
  assert tachy["kind"] == tasks_lib.CLASSIFICATION and tachy["n_subjects"] == 8
  assert tachy["n_segments"] == 8 * 3 and 0.0 <= tachy["metrics"]["auroc"]["value"] <= 1.0
  assert results["label:rate:regression"]["kind"] == tasks_lib.REGRESSION
  assert np.isfinite(results["label:rate:regression"]["metrics"]["mae"]["value"])
  assert "label:tachy" in printed and "label:rate:regression" in printed
  # xmae-embed joins the labels file to raw recordings as well; one that matches none: one line
  raw = tmp_path / "raw.npz"
  reader_flags = ["--fs", "125", "--ppg-column", "pleth", "--source", "csv"]
  assert (
      xmae_embed.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(recordings),
              "--output",
              str(raw),
              "--labels",
              str(tmp_path / "labels.csv"),
              *reader_flags,
          ]
      )
      == 0
  )
  a = embed_lib.load_embeddings(raw)
  expected = [int(s.split("/")[0][-1]) % 2 for s in a["segment_ids"]]
  np.testing.assert_array_equal(a["label.tachy"], expected)
  (tmp_path / "other.csv").write_text("record,tachy\nsomeone,1\n")
  capsys.readouterr()
  assert (
      xmae_embed.main(
          [
              "--encoder",
              str(tiny_package),
              "--input",
              str(recordings),
              "--output",
              str(tmp_path / "x.npz"),
              "--labels",
              str(tmp_path / "other.csv"),
              *reader_flags,
          ]
      )
      == 1
  )
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "other.csv matches none of the 8 recordings by record" in err
  assert not (tmp_path / "x.npz").exists()
