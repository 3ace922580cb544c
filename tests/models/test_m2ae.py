"""M2AE: contrastive loss values, complementary masks, single-modality fingerprints, training."""

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
  b = jnp.array([[2.0, 0.0], [3.0, 0.0]])  # normalization makes the length irrelevant
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
  np.testing.assert_allclose(
      sub, _loop_info_nce(np.array(a), np.array(b), 4.0, np.array(subject)), rtol=1e-5
  )
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


# ----------------------------------------------------------------------------------- the model
def _m2ae_config(arg="tiny,model.seq_len=400"):
  from xmae_jax import config_lib

  return config_lib.load(f"{REPO / 'configs' / 'm2ae.py'}:{arg}")


def _signals(batch=4, length=400, seed=0):
  kp, ke = jax.random.split(jax.random.key(seed))
  return (
      jax.random.uniform(kp, (batch, length), minval=-1, maxval=1),
      jax.random.uniform(ke, (batch, length), minval=-1, maxval=1),
  )


@pytest.mark.parametrize(
    "mode,ratio", [("block", 0.5), ("scatter", 0.5), ("anchor", 0.7), ("mixed", 0.3)]
)
def test_complementary_masks_are_complements(mode, ratio):
  from xmae_jax.models import m2ae
  from xmae_jax.models import masking

  n = 25
  ecg_keep, ppg_keep = m2ae.complementary_keep_ids(jax.random.key(5), 16, n, ratio, mode)
  assert ecg_keep.shape == (16, masking.num_kept(ratio, n))
  assert ppg_keep.shape == (16, n - ecg_keep.shape[1])
  ecg_mask = masking.mask_from_keep(ecg_keep, n)
  ppg_mask = masking.mask_from_keep(ppg_keep, n)
  np.testing.assert_array_equal(ecg_mask + ppg_mask, 1)  # each patch visible exactly once
  assert np.all(np.diff(np.asarray(ppg_keep), axis=1) > 0)  # ascending
  assert len({tuple(r) for r in np.asarray(ecg_keep)}) > 1  # drawn per example
  if mode == "block":  # the masked ECG span (= visible PPG) is one contiguous run
    assert np.all(np.diff(np.asarray(ppg_keep), axis=1) == 1)


def _poisoned(params, prefixes):
  """`params` with every leaf under one of `prefixes` replaced by NaN (or the row `[i]`)."""

  def poison(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    for prefix in prefixes:
      base, _, row = prefix.partition("[")
      if name.startswith(base):
        return leaf.at[int(row[:-1])].set(jnp.nan) if row else jnp.full_like(leaf, jnp.nan)
    return leaf

  return jax.tree_util.tree_map_with_path(poison, params)


def test_fingerprint_and_reconstruction_from_either_modality():
  from flax import nnx

  from xmae_jax import models

  model = models.build(_m2ae_config(), nnx.Rngs(0))
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ppg, ecg = _signals()
  _, other_ecg = _signals(seed=1)

  def outputs(params):  # one compilation; called with differently poisoned parameters
    m = nnx.merge(graphdef, params, rest)
    return {
        "ppg": m.fingerprint(ppg=ppg),
        "ecg": m.fingerprint(ecg=ecg),
        "both": m.fingerprint(ppg=ppg, ecg=ecg),
        "both_other": m.fingerprint(ppg=ppg, ecg=other_ecg),
        "enc_ppg": m.encoder("ppg")(ppg),
        "enc_ecg": m.encoder("ecg")(ecg),
        "ppg_to_ecg": m.reconstruct(ppg=ppg, target="ecg"),
        "ecg_to_ppg": m.reconstruct(ecg=ecg, target="ppg"),
        "both_to_ecg": m.reconstruct(ppg=ppg, ecg=ecg, target="ecg"),
        "both_other_to_ecg": m.reconstruct(ppg=ppg, ecg=other_ecg, target="ecg"),
    }

  outputs = (
      jax.jit(outputs)
      .lower(params)
      .compile(
          compiler_options={
              "xla_backend_optimization_level": 0,
              "xla_llvm_disable_expensive_passes": True,
          }
      )
  )
  out = {k: np.asarray(v) for k, v in outputs(params).items()}
  latent = model.latent_dim
  for k in ("ppg", "ecg", "both", "enc_ppg", "enc_ecg"):
    assert out[k].shape == (4, latent) and np.all(np.isfinite(out[k])), k
  for k in ("ppg_to_ecg", "ecg_to_ppg", "both_to_ecg"):
    assert out[k].shape == (4, 400) and np.all(np.isfinite(out[k])), k
  # The joint fingerprint and reconstruction use both signals.
  assert not np.allclose(out["both"], out["both_other"], atol=1e-6)
  assert not np.allclose(out["both"], out["ppg"], atol=1e-6)
  assert not np.allclose(out["both_to_ecg"], out["both_other_to_ecg"], atol=1e-6)
  # The exported encoders compute the single-modality fingerprints.
  np.testing.assert_allclose(out["enc_ppg"], out["ppg"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["enc_ecg"], out["ecg"], rtol=1e-5, atol=1e-6)

  # A single-modality output depends on nothing of the other modality: with every ECG encoder
  # parameter and the ECG modality embedding set to NaN, PPG-only outputs do not change.
  cut_ecg = {
      k: np.asarray(v)
      for k, v in outputs(
          _poisoned(params, ("ecg_encoder", "bottleneck/modality_embed[0]"))
      ).items()
  }
  for k in ("ppg", "enc_ppg", "ppg_to_ecg"):
    np.testing.assert_array_equal(cut_ecg[k], out[k])
  assert np.all(np.isnan(cut_ecg["ecg"])) and np.all(np.isnan(cut_ecg["both"]))
  cut_ppg = {
      k: np.asarray(v)
      for k, v in outputs(
          _poisoned(params, ("ppg_encoder", "bottleneck/modality_embed[1]"))
      ).items()
  }
  for k in ("ecg", "enc_ecg", "ecg_to_ppg"):
    np.testing.assert_array_equal(cut_ppg[k], out[k])
  assert np.all(np.isnan(cut_ppg["ppg"]))
  # ... and fingerprints never touch the decoders.
  cut_dec = {
      k: np.asarray(v)
      for k, v in outputs(_poisoned(params, ("ecg_decoder", "ppg_decoder"))).items()
  }
  for k in ("ppg", "ecg", "both"):
    np.testing.assert_array_equal(cut_dec[k], out[k])


def test_bad_modalities_are_clear_errors():
  from flax import nnx

  from xmae_jax import models

  model = nnx.eval_shape(lambda: models.build(_m2ae_config(), nnx.Rngs(0)))
  x = jax.ShapeDtypeStruct((2, 400), jnp.float32)
  with pytest.raises(ValueError, match="at least one modality"):
    model.fingerprint()
  with pytest.raises(ValueError, match="unknown modality 'abp'"):
    jax.eval_shape(lambda m, p: m.reconstruct(ppg=p, target="abp"), model, x)
  with pytest.raises(ValueError, match="unknown modality"):
    model.encoder("abp")


def test_zero_weights_skip_their_terms():
  from flax import nnx

  from xmae_jax import models

  config = _m2ae_config(
      "tiny,model.seq_len=400,loss.w_cross_ecg=0,loss.w_cross_ppg=0,"
      "loss.w_contrast=0,loss.w_augment=0"
  )
  model = nnx.eval_shape(lambda: models.build(config, nnx.Rngs(0)))
  x = jax.ShapeDtypeStruct((2, 400), jnp.float32)
  _, metrics = jax.eval_shape(
      lambda m, b: m.loss(b, jax.random.key(0)), model, {"ppg": x, "ecg": x}
  )
  assert set(metrics) == {"loss", "mse_ecg", "mse_ppg"}
