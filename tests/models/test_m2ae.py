"""M2AE: contrastive loss values, complementary masks, single-modality fingerprints, training."""
import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmae_jax.models import contrastive

REPO = Path(__file__).resolve().parents[2]


def _loop_info_nce(a, b, scale, subject=None):
  """Plain-loop oracle: symmetric multi-positive InfoNCE (positives = same subject, or i == j)."""
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  n = len(a)
  same = (lambda i, j: subject[i] == subject[j]) if subject is not None else (lambda i, j: i == j)
  total = 0.0
  for x, y in ((a, b), (b, a)):
    for i in range(n):
      logits = [scale * float(np.dot(x[i], y[j])) for j in range(n)]
      log_z = math.log(sum(math.exp(v) for v in logits))
      positives = [j for j in range(n) if same(i, j)]
      total += -sum(logits[j] - log_z for j in positives) / len(positives) / n
  return total / 2


def test_info_nce_closed_form():
  # a = e0, e1; b = e0, e0; scale 1. a->b rows: log 2, log 2. b->a rows: log(1+e)-1, log(1+e).
  a = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  b = jnp.array([[2.0, 0.0], [3.0, 0.0]])       # normalization makes the length irrelevant
  expected = 0.5 * (math.log(2) + math.log(1 + math.e) - 0.5)
  np.testing.assert_allclose(contrastive.info_nce(a, b, 1.0), expected, rtol=1e-6)


def test_info_nce_matches_loop_oracle_and_subject_positives_differ():
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (6, 5))
  b = jax.random.normal(kb, (6, 5))
  subject = jnp.array([3, 3, 7, 1, 7, 9])
  seg = contrastive.info_nce(a, b, 4.0)
  sub = contrastive.info_nce(a, b, 4.0, subject=subject, positives="subject")
  np.testing.assert_allclose(seg, _loop_info_nce(np.array(a), np.array(b), 4.0), rtol=1e-5)
  np.testing.assert_allclose(sub, _loop_info_nce(np.array(a), np.array(b), 4.0, np.array(subject)),
                             rtol=1e-5)
  assert abs(float(seg) - float(sub)) > 1e-3
  # With every subject distinct the two definitions coincide.
  distinct = contrastive.info_nce(a, b, 4.0, subject=jnp.arange(6), positives="subject")
  np.testing.assert_allclose(distinct, seg, rtol=1e-6)


def test_subject_positives_without_subject_ids_is_a_clear_error():
  with pytest.raises(contrastive.MissingSubjectError, match="subject"):
    contrastive.info_nce(jnp.ones((2, 3)), jnp.ones((2, 3)), 1.0, positives="subject")


def test_temperature_is_clipped_and_optionally_fixed():
  assert float(contrastive.Temperature(0.001)()) == pytest.approx(100.0, rel=1e-5)
  fixed = contrastive.Temperature(0.05, learnable=False)
  assert float(fixed()) == pytest.approx(20.0, rel=1e-5)
  from flax import nnx
  assert not jax.tree.leaves(nnx.state(fixed, nnx.Param))
  assert len(jax.tree.leaves(nnx.state(contrastive.Temperature(0.05), nnx.Param))) == 1
