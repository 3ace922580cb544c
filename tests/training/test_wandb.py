"""The Weights & Biases hook beside TensorBoard: off by default, the same scalars at the same
steps when train.wandb.project is set, offline unless WANDB_MODE says otherwise, one W&B run per
workdir across resumes, one clear line when wandb is missing or a name is invalid."""

import sys
import types

import pytest

from xmae_jax import config_lib
from xmae_jax.training import metrics


class FakeWandb(types.ModuleType):
  """What the hook calls of the wandb module: init(**kwargs) -> run with log(...) and finish()."""

  def __init__(self):
    super().__init__("wandb")
    self.inits, self.logged, self.finished = [], [], 0

  def init(self, **kwargs):
    self.inits.append(kwargs)
    fake = self

    class Run:

      def log(self, data, step=None):
        fake.logged.append((step, dict(data)))

      def finish(self):
        fake.finished += 1

    return Run()


@pytest.fixture
def fake_wandb(monkeypatch):
  fake = FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  monkeypatch.delenv("WANDB_MODE", raising=False)
  return fake


def _config(**wandb):
  return config_lib.load("xmae:tiny", {f"train.wandb.{k}": v for k, v in wandb.items()})


def test_off_by_default_wandb_is_not_even_imported(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would raise
  config = _config()
  assert config.train.wandb.project == ""
  writer = metrics.MetricsWriter(tmp_path, tensorboard=False, config=config)
  writer.write(1, {"train_loss": 0.5})
  writer.close()
  assert metrics.read_metrics(tmp_path) == [{"step": 1, "train_loss": 0.5}]


def test_scalars_and_steps_go_to_wandb_offline(tmp_path, fake_wandb):
  config = _config(project="xmae-demo", entity="lab")
  writer = metrics.MetricsWriter(tmp_path / "run1", tensorboard=False, config=config)
  writer.write(20, {"train_loss": 0.25, "lr": 1e-4, "mfu": None})
  writer.write(40, {"train_loss": 0.125, "val_loss": 0.5})
  writer.close()
  (init,) = fake_wandb.inits
  assert init["mode"] == "offline"  # no network unless asked
  assert (init["project"], init["entity"], init["name"]) == ("xmae-demo", "lab", "run1")
  assert init["dir"] == str(tmp_path / "run1") and init["resume"] == "allow"
  assert init["config"]["train"]["wandb"]["project"] == "xmae-demo"  # the run's whole config
  assert init["config"]["model"]["name"] == "xmae"
  assert fake_wandb.logged == [
      (20, {"train_loss": 0.25, "lr": 1e-4}),  # unknown: left out
      (40, {"train_loss": 0.125, "val_loss": 0.5}),
  ]
  assert fake_wandb.finished == 1
  # the same rows as metrics.jsonl
  rows = metrics.read_metrics(tmp_path / "run1")
  assert [r["step"] for r in rows] == [20, 40] and rows[0]["mfu"] is None


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, fake_wandb, monkeypatch):
  config = _config(project="p")
  for _ in range(2):
    metrics.MetricsWriter(tmp_path, tensorboard=False, config=config).close()
  first, second = fake_wandb.inits
  assert first["id"] == second["id"] == (tmp_path / metrics.WANDB_ID_FILE).read_text().strip()
  monkeypatch.setenv("WANDB_MODE", "online")  # the user's choice is left to wandb
  metrics.MetricsWriter(tmp_path / "other", tensorboard=False, config=config).close()
  assert "mode" not in fake_wandb.inits[-1] and fake_wandb.inits[-1]["id"] != first["id"]


def test_missing_wandb_and_bad_names_are_one_line(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)
  with pytest.raises(metrics.TrackingError, match=r"pip install xmae-jax\[wandb\]"):
    metrics.MetricsWriter(tmp_path, tensorboard=False, config=_config(project="p"))
  with pytest.raises(config_lib.ConfigError, match="config train.wandb.project='a/b': must be"):
    _config(project="a/b")
  with pytest.raises(config_lib.ConfigError, match="train.wandb.entity"):
    _config(entity="x" * 129)


def test_inactive_processes_start_no_wandb_run(tmp_path, fake_wandb):
  metrics.MetricsWriter(tmp_path, active=False, config=_config(project="p")).close()
  assert fake_wandb.inits == []


def test_real_wandb_offline(tmp_path, monkeypatch):
  """With the wandb extra installed (skipped otherwise): an offline run under WORKDIR/wandb,
  resumed under the same id, and no network (offline mode)."""
  pytest.importorskip("wandb")
  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.setenv("WANDB_SILENT", "true")
  config = _config(project="xmae-test")
  for step in (10, 20):
    writer = metrics.MetricsWriter(tmp_path, tensorboard=False, config=config)
    writer.write(step, {"train_loss": 1.0 / step})
    writer.close()
  run_id = (tmp_path / metrics.WANDB_ID_FILE).read_text().strip()
  runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
  assert len(runs) == 2 and all(f"-{run_id}" in r for r in runs)
