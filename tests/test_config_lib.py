"""config_lib: presets give the values they always gave, one loader, overrides, the JSON round
trip, validation, and every user error as one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections as mlc
import pytest

from xmae_jax import config_lib
from xmae_jax import errors

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Every config file x preset as the code at e70bbe3 built them (before presets moved into one
# block per file); tuples are tagged {"tuple": [...]} so a list/tuple change is caught too.
EXPECTED = REPO / "tests" / "fixtures" / "config_presets.json"


def _tagged(x):
  if isinstance(x, tuple):
    return {"tuple": [_tagged(v) for v in x]}
  if isinstance(x, list):
    return [_tagged(v) for v in x]
  if isinstance(x, dict):
    return {k: _tagged(v) for k, v in x.items()}
  return x


def _load(name="xmae", arg="tiny"):
  return config_lib.load(f"{CONFIGS / name}.py:{arg}")


# --- presets ------------------------------------------------------------------------------------


def test_the_fixture_covers_every_config_file_and_preset():
  expected = json.loads(EXPECTED.read_text())
  files = sorted(p.stem for p in CONFIGS.glob("*.py"))
  assert sorted(expected) == sorted(f"{f}:{p}" for f in files for p in config_lib.PRESET_NAMES)


@pytest.mark.parametrize("key", sorted(json.loads(EXPECTED.read_text())))
def test_every_preset_keeps_its_values(key):
  name, preset = key.split(":")
  assert _tagged(_load(name, preset).to_dict()) == json.loads(EXPECTED.read_text())[key]


def test_default_preset_is_paper():
  assert _load("xmae", "").to_dict() == _load("xmae", "paper").to_dict()
  assert config_lib.data_config().to_dict() == _load("xmae", "paper").data.to_dict()


def test_a_presets_block_naming_an_unknown_preset_is_one_line():
  with pytest.raises(config_lib.ConfigError, match="unknown preset 'smol'"):
    config_lib.apply_preset(_load(), "tiny", {"smol": {}})


# --- loading ------------------------------------------------------------------------------------


def test_missing_file_unknown_preset_and_no_get_config_are_one_line(tmp_path):
  cases = [
      (tmp_path / "missing.py", "config file .*missing.py does not exist"),
      (
          f"{CONFIGS / 'xmae.py'}:tinyy",
          "unknown config preset 'tinyy'; choose one of paper, demo, tiny, cpu, 100m, 300m, 1b",
      ),
      (f"{CONFIGS / 'xmae.py'}:tiny,oops", "config argument 'oops': expected key=value"),
  ]
  (tmp_path / "empty.py").write_text("X = 1\n")
  cases.append((tmp_path / "empty.py", "has no get_config"))
  for spec, pattern in cases:
    with pytest.raises(config_lib.ConfigError, match=pattern) as e:
      config_lib.load(spec)
    assert isinstance(e.value, errors.XmaeError) and "\n" not in str(e.value)


def test_a_typo_in_a_key_names_it_with_the_suggestion():
  with pytest.raises(config_lib.ConfigError) as e:
    _load("xmae", "tiny,train.lrr=1e-4")
  assert str(e.value) == "unknown config key train.lrr (did you mean train.lr?)"
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load(CONFIGS / "m2ae.py", {"trian.lr": "1"})
  assert str(e.value) == "unknown config key trian.lr (did you mean train?)"
  with pytest.raises(config_lib.ConfigError, match=r"^unknown config key train.lr.x$"):
    config_lib.apply_overrides(_load(), {"train.lr.x": "1"})


def test_load_of_a_workdir_gives_its_saved_config(tmp_path):
  config = _load("m2ae", "tiny,seed=3")
  path = config_lib.write_config(tmp_path / "run", config)
  assert path == tmp_path / "run" / config_lib.CONFIG_FILE
  assert [p.name for p in (tmp_path / "run").iterdir()] == [config_lib.CONFIG_FILE]  # no temp left
  back = config_lib.load(tmp_path / "run")
  assert back.to_dict() == config.to_dict() and back.model.stem_widths == (8, 16, 16)
  assert config_lib.load(tmp_path / "run", {"seed": "4"}).seed == 4
  with pytest.raises(config_lib.ConfigError, match="holds no config.json"):
    config_lib.load(tmp_path)


def test_json_round_trip_restores_tuples():
  config = _load("xmae", "paper")
  text = json.dumps(config_lib.config_to_dict(config))
  back = config_lib.config_from_dict(json.loads(text))
  assert isinstance(back, mlc.ConfigDict) and back.to_dict() == config.to_dict()
  assert back.mesh.axes == (("data", -1), ("fsdp", 1))


# --- overrides ----------------------------------------------------------------------------------


def test_text_overrides_take_the_type_of_the_key():
  c = config_lib.apply_overrides(
      _load(),
      {
          "train.lr": "1e-4",
          "train.batch_size": "16",
          "data.augment.enabled": "true",
          "model.name": "toy",
          "mesh.axes": "(('data', -1), ('fsdp', 2))",
          "data.modalities": "['ppg']",
      },
  )
  assert c.train.lr == 1e-4 and c.train.batch_size == 16 and c.data.augment.enabled is True
  assert c.model.name == "toy" and c.mesh.axes == (("data", -1), ("fsdp", 2))
  assert c.data.modalities == ("ppg",)
  assert config_lib.apply_overrides(c, {"data.augment.enabled": "no"}).data.augment.enabled is False


def test_value_overrides_are_assigned_with_lists_as_tuples():
  c = config_lib.apply_overrides(_load(), {"mesh.param_rules": [[".*", "fsdp"]], "train.lr": 1})
  assert c.mesh.param_rules == ((".*", "fsdp"),) and c.train.lr == 1.0


@pytest.mark.parametrize(
    "key,text,pattern",
    [
        ("train.lr", "abc", "config key train.lr: 'abc' is not a float"),
        ("train.batch_size", "1.5", "config key train.batch_size: '1.5' is not a int"),
        ("data.augment.enabled", "maybe", "config key data.augment.enabled: 'maybe' is not a bool"),
        ("mesh.axes", "3", "config key mesh.axes: '3' is not a tuple"),
        ("train", "3", "config key train is a section, not a value"),
    ],
)
def test_bad_override_values_are_one_line(key, text, pattern):
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.apply_overrides(_load(), {key: text})
  assert str(e.value) == pattern


def test_flag_overrides_split_out_of_argv():
  argv = [
      "prog",
      "--config",
      "configs/xmae.py:tiny",
      "--config.train.lr=1e-4",
      "--config.data.dir",
      "d",
      "--config.data.augment.enabled",
      "--workdir",
      "w",
      "--noconfig.data.with_subject",
      "--config=x",
  ]
  rest, overrides = config_lib.flag_overrides(argv)
  assert rest == ["prog", "--config", "configs/xmae.py:tiny", "--workdir", "w", "--config=x"]
  assert overrides == {
      "train.lr": "1e-4",
      "data.dir": "d",
      "data.augment.enabled": "true",
      "data.with_subject": "false",
  }


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["xmae", "m2ae", "ppg_mae", "clip", "xmae_nobridge"])
def test_every_shipped_config_is_valid(name):
  """Each preset of each config file passes validation unchanged and names a model that exists."""
  from xmae_jax import models

  for preset in config_lib.PRESET_NAMES:
    config = _load(name, preset)
    before = config.to_dict()
    assert config_lib.validate(config) is config and config.to_dict() == before
    assert config.model.name in models.REGISTRY, (name, preset, config.model.name)


STEP_COUNT = r"must be in \[0, 2147483647\] \(the step counter is a 32-bit integer\)"
BAD = [  # (config file, key, bad value, message after "config KEY=VALUE: ")
    ("xmae", "train.lr", 0.0, "must be > 0"),
    ("xmae", "train.lr", -1e-4, "must be > 0"),
    ("xmae", "train.batch_size", 0, "the global batch size must be > 0"),
    ("xmae", "train.warmup_frac", 1.0, r"must be in \[0, 1\)"),
    ("xmae", "train.warmup_frac", -0.1, r"must be in \[0, 1\)"),
    ("xmae", "train.num_steps", -1, STEP_COUNT),
    ("xmae", "train.num_steps", 10**13, STEP_COUNT),  # overflowed the int32 step counter
    ("xmae", "train.num_epochs", -1, STEP_COUNT),
    ("xmae", "train.eval_every", -1, "must be >= 0"),
    ("xmae", "train.log_every", -5, "must be >= 0"),
    ("xmae", "train.checkpoint_every", -1, "must be >= 0"),
    ("xmae", "train.figure_every", -1, "must be >= 0"),
    ("xmae", "train.eval_batches", -1, "must be >= 0"),
    ("xmae", "train.keep_checkpoints", 0, "must be >= 1"),
    ("xmae", "train.early_stop_patience", -1, "must be >= 0"),
    ("xmae", "train.grad_accum_steps", 0, "must be >= 1"),
    ("xmae", "train.grad_clip_norm", -1.0, r"must be >= 0 \(0 = off\)"),
    ("xmae", "train.weight_decay", -0.01, "must be >= 0"),
    ("xmae", "train.b1", 1.0, r"must be in \[0, 1\)"),
    ("xmae", "train.b2", -0.5, r"must be in \[0, 1\)"),
    ("xmae", "model.dropout", 1.0, r"must be in \[0, 1\)"),
    ("xmae", "model.dropout", -0.1, r"must be in \[0, 1\)"),
    ("xmae", "model.seq_len", 0, "must be > 0"),
    ("xmae", "model.d_model", -32, "must be > 0"),
    ("xmae", "model.depth_ppg", -1, "must be >= 0"),
    ("xmae", "masking.ratio_ecg", 1.0, r"must be in \[0, 1\)"),
    ("xmae", "masking.ratio_ppg", -0.2, r"must be in \[0, 1\)"),
    ("xmae", "masking.curriculum_ema", 1.0, r"must be in \[0, 1\)"),
    ("xmae", "masking.curriculum_patience", 0, "must be >= 1"),
    ("xmae", "loss.w_ecg", -1.0, "must be >= 0"),
    ("xmae", "data.sampling_rate", 0, "must be > 0"),
    ("xmae", "data.read_threads", 0, "must be >= 1"),
    ("xmae", "data.augment.shift_prob", 1.5, r"must be in \[0, 1\]"),
    ("xmae", "data.augment.max_shift", -6, "must be >= 0"),
    ("m2ae", "masking.ratio_ecg", 1.2, r"must be in \[0, 1\)"),
    ("m2ae", "loss.w_contrast", -0.01, "must be >= 0"),
    ("m2ae", "loss.temperature", 0.0, "must be > 0"),
    ("m2ae", "loss.view.noise_std", -0.02, "must be >= 0"),
    ("ppg_mae", "masking.ratio_ppg", 1.0, r"must be in \[0, 1\)"),
    ("clip", "loss.temperature", -0.07, "must be > 0"),
]


@pytest.mark.parametrize("name,key,value,message", BAD, ids=[f"{b[0]}-{b[1]}={b[2]}" for b in BAD])
def test_each_rule_names_the_key_and_value(name, key, value, message):
  config = config_lib.apply_overrides(_load(name), {key: value})
  with pytest.raises(config_lib.ConfigError, match=rf"^config {key}={value!r}: {message}$") as e:
    config_lib.validate(config)
  assert isinstance(e.value, errors.XmaeError)
  with pytest.raises(config_lib.ConfigError, match=key):  # the loader validates
    config_lib.load(f"{CONFIGS / name}.py:tiny", {key: str(value)})


def test_a_tuple_element_out_of_range_is_named():
  with pytest.raises(
      config_lib.ConfigError, match=r"^config masking.curriculum_levels.2=1.0: must be in \(0, 1\)$"
  ):
    config_lib.validate(
        config_lib.apply_overrides(_load(), {"masking.curriculum_levels": (0.8, 0.9, 1.0)})
    )
  with pytest.raises(config_lib.ConfigError, match="low must be <= high"):
    config_lib.validate(
        config_lib.apply_overrides(_load(), {"data.augment.scale_range": (1.2, 0.8)})
    )


def test_a_weighted_reconstruction_needs_its_modality_masked():
  config = config_lib.apply_overrides(_load("xmae_nobridge"), {"masking.ratio_ppg": 0.0})
  with pytest.raises(
      config_lib.ConfigError, match=r"^config masking.ratio_ppg=0 with loss.w_ppg=1.0: "
  ):
    config_lib.validate(config)
  # The reference's control (PPG neither masked nor reconstructed) stays valid.
  config_lib.validate(config_lib.apply_overrides(config, {"loss.w_ppg": 0.0}))


# --- the trainer's command line -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--config", "configs/xmae.py:tiny", "--config.train.lrr=1"],
            "unknown config key train.lrr (did you mean train.lr?)",
        ),
        (
            ["--config", "configs/xmae.py:tinyy"],
            "unknown config preset 'tinyy'; choose one of paper, demo, tiny, cpu, 100m, 300m, 1b",
        ),
        (["--config", "configs/nope.py"], "config file configs/nope.py does not exist"),
        (
            ["--config", "configs/xmae.py:tiny", "--config.train.batch_size", "0"],
            "config train.batch_size=0: the global batch size must be > 0",
        ),
        (
            ["--config", "configs/xmae.py:tiny", "--config.train.num_steps=10000000000000"],
            "config train.num_steps=10000000000000: must be in [0, 2147483647] "
            "(the step counter is a 32-bit integer)",
        ),
    ],
)
def test_trainer_cli_config_errors_are_one_line(tmp_path, args, message):
  proc = subprocess.run(
      [sys.executable, "-m", "xmae_jax.cli.xmae_train", *args, "--workdir", str(tmp_path / "run")],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)},
  )
  assert proc.returncode == 1
  assert proc.stderr.strip() == f"xmae-train: error: {message}"
  assert not (tmp_path / "run").exists()
