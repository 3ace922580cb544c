"""The reconstruction report end to end: an M2AE workdir gives both directions' rows (each with
its own shuffled control), an xMAE workdir its one direction, on a prepared dataset and WFDB."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import datasets
from xmae_jax import config_lib
from xmae_jax.evaluation import reconstruction as recon

REPO = Path(__file__).resolve().parents[2]


def load_config(name: str):
  return config_lib.load(f"{REPO / 'configs' / name}.py:tiny")


class Oracle(nnx.Module):
  """Stands in for a both-way model: `reconstruct` returns its input as the target. On windows
  whose ECG equals their PPG it reconstructs perfectly, so only the wiring is tested."""

  def __init__(self):
    self.gain = nnx.Param(jnp.ones(()))

  def reconstruct(self, ppg=None, ecg=None, *, target="ecg"):
    return (ppg if ppg is not None else ecg) * self.gain[...]


def test_both_way_wiring_perfect_and_shuffled_control():
  import neurokit2 as nk

  x = np.stack(
      [
          nk.ppg_simulate(
              duration=10,
              sampling_rate=100,
              heart_rate=hr,
              random_state=i,
              drift=0,
              motion_amplitude=0,
              powerline_amplitude=0,
              burst_amplitude=0,
          )
          for i, hr in enumerate((55, 70, 85, 100))
      ]
  ).astype(np.float32)
  x = 2 * (x - x.min(1, keepdims=True)) / np.ptp(x, axis=1, keepdims=True) - 1
  model, config = Oracle(), load_config("m2ae")
  assert recon.model_directions(model) == ("ecg<-ppg", "ppg<-ecg")
  r = recon.evaluate(model, config, x, x.copy(), direction="ppg<-ecg")
  assert r["direction"] == "ppg<-ecg" and r["scored_samples"] == "all"
  s, c = r["reconstruction"], r["shuffled_ecg_control"]
  assert "shuffled_ppg_control" not in r
  assert s["median_r"] == pytest.approx(1.0) and s["sensitivity"] == 1.0
  assert s["median_abs_error_ms"] == 0.0
  # another window's ECG (another heart rate): the feet no longer line up
  assert c["true_beats"] == s["true_beats"] and c["share_within_50ms"] < 0.6
  assert c["median_r"] < 0.9


@pytest.fixture(scope="module")
def m2ae_workdir(tmp_path_factory):
  from xmae_jax import models
  from xmae_jax.training import model_checkpoint

  config = load_config("m2ae")
  model = models.build(config, nnx.Rngs(5))
  workdir = tmp_path_factory.mktemp("m2ae")
  model_checkpoint.write_model_checkpoint(workdir, model, config, step=3)
  return workdir


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return datasets.synthetic_dataset(tmp_path_factory, 6, 1.0)


def test_report_rows_for_m2ae_and_xmae(
    m2ae_workdir, tiny_workdir, dataset, physionet_dir, tmp_path
):
  from xmae_jax.cli import xmae_recon_report as cli

  out = tmp_path / "out"
  assert (
      cli.main(
          [
              "--model",
              f"m2ae={m2ae_workdir}",
              "--model",
              f"xmae={tiny_workdir}",
              "--data",
              f"syn={dataset}",
              "--wfdb",
              str(physionet_dir / "a103l"),
              "--timing-ceiling",
              "--output-dir",
              str(out),
          ]
      )
      == 0
  )
  report = json.loads((out / "reconstruction.json").read_text())
  rows = report["rows"]
  assert [c["data"] for c in report["ceilings"]] == ["syn", "a103l"]
  for c in report["ceilings"]:
    assert c["windows"] == (6 if c["data"] == "syn" else 33)
    assert 0 < c["mse_r_peaks_own_beat"] < c["mse_window_mean"]
  got = [(r["name"], r["data"], r["direction"]) for r in rows]
  assert got == [
      (model, data, direction)
      for data in ("syn", "a103l")
      for model, direction in (("m2ae", "ecg<-ppg"), ("m2ae", "ppg<-ecg"), ("xmae", "ecg<-ppg"))
  ]
  for r in rows:
    source = r["direction"].split("<-")[1]
    other = "ecg" if source == "ppg" else "ppg"
    assert set(r["reconstruction"]) == set(r[f"shuffled_{source}_control"])
    assert f"shuffled_{other}_control" not in r
    assert r["reconstruction"]["segments"] == (6 if r["data"] == "syn" else 33)
    assert r["reconstruction"]["true_beats"] > 0
    assert r["scored_samples"] == ("all" if r["name"] == "m2ae" else "masked")
    d = r["paired_minus_control"]
    assert 1 <= d["subjects"] <= r["reconstruction"]["segments"]
    assert d["sensitivity"]["value"] == pytest.approx(
        r["reconstruction"]["sensitivity"] - r[f"shuffled_{source}_control"]["sensitivity"]
    )
  figs = sorted(p.name for p in (out / "figures").iterdir())
  assert figs == [
      "m2ae_a103l_ecg_from_ppg.png",
      "m2ae_a103l_ppg_from_ecg.png",
      "m2ae_syn_ecg_from_ppg.png",
      "m2ae_syn_ppg_from_ecg.png",
      "xmae_a103l.png",
      "xmae_syn.png",
  ]
  md = (out / "reconstruction.md").read_text()
  assert md.count("* xmae (ecg<-ppg) on syn: sensitivity ") == 1
  lines = md.splitlines()
  ceiling = lines.index(next(line for line in lines if line.startswith("| data | windows |")))
  assert [line.split(" | ")[0] for line in lines[ceiling + 2 : ceiling + 4]] == ["| syn", "| a103l"]
  table = [line for line in lines[:ceiling] if line.startswith("| ")]
  assert table[0].startswith("| model | direction | data | condition |")
  assert (
      sum(line.startswith("| m2ae | ppg<-ecg | syn | ECG shuffled (control) |") for line in table)
      == 1
  )
  assert sum(line.startswith("| xmae | ecg<-ppg | a103l | PPG paired |") for line in table) == 1
  assert len(table) == 1 + 2 * len(rows)
  assert all(len(line.split("|")) == len(table[0].split("|")) for line in table)


def test_model_that_reconstructs_nothing_is_one_line(physionet_dir, tmp_path, capsys):
  from xmae_jax import models
  from xmae_jax.cli import xmae_recon_report as cli
  from xmae_jax.training import model_checkpoint

  config = load_config("clip")
  workdir = tmp_path / "wd"
  model_checkpoint.write_model_checkpoint(workdir, models.build(config, nnx.Rngs(0)), config)
  assert (
      cli.main(
          [
              "--model",
              f"bad={workdir}",
              "--wfdb",
              str(physionet_dir / "a103l"),
              "--output-dir",
              str(tmp_path / "o"),
          ]
      )
      == 1
  )
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and f"bad={workdir}" in err and "does not reconstruct" in err
