"""The mask-ratio curriculum (xmae_jax.training.curriculum): promotion rule, state, config."""

from pathlib import Path

import pytest

from xmae_jax import config_lib
from xmae_jax.training import curriculum


def test_ladder_waits_for_threshold_then_promotes_on_ema_improvement():
  c = curriculum.LadderCurriculum()
  for _ in range(5):
    assert c.update(0.5) == 0.8  # EMA above 0.09: not started
  assert not c.started
  c = curriculum.LadderCurriculum()
  assert c.update(0.08) == 0.8 and c.started  # starts, entry EMA 0.08
  assert c.update(0.01) == 0.8  # 2 evaluations at level: too early
  assert c.update(0.01) == 0.85  # 3rd, EMA improved >= 10%: promoted
  assert c.evals_at_level == 0 and c.entry_ema == pytest.approx(c.ema)
  ratios = [c.update(0.0) for _ in range(3)]
  assert ratios[-1] == 0.9
  assert [c.update(0.0) for _ in range(5)] == [0.9] * 5  # last level kept


def test_ladder_does_not_promote_without_improvement():
  c = curriculum.LadderCurriculum()
  for _ in range(10):
    c.update(0.05)
  assert c.ratio == 0.8 and c.started


def test_ladder_state_round_trip_and_config():
  tiny = config_lib.load(f"{Path(__file__).resolve().parents[2] / 'configs' / 'xmae.py'}:tiny")
  a = curriculum.LadderCurriculum.from_config(tiny.masking)
  assert tuple(a.levels) == (0.8, 0.85, 0.9) and a.beta == 0.8 and a.min_evals == 3
  for x in (0.08, 0.05, 0.03):
    a.update(x)
  b = curriculum.LadderCurriculum.from_config(tiny.masking)
  b.load_state_dict(a.state_dict())
  assert [a.update(x) for x in (0.02, 0.01, 0.01, 0.0)] == [
      b.update(x) for x in (0.02, 0.01, 0.01, 0.0)
  ]
  with pytest.raises(curriculum.CurriculumError):
    b.load_state_dict({"level": 0})
