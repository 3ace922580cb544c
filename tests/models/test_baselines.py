"""Baselines (PPG-MAE, CLIP, xMAE without bridge) and M2AE: build, jit, grad, and training.

Every model is built from its config file's tiny preset (shortened to 400 samples to keep the
CPU time small) and trained a few dozen AdamW steps on one fixed batch of paired waveforms.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from xmae_jax import config_lib
from xmae_jax import models
from xmae_jax.models import contrastive

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("m2ae", "ppg_mae", "clip", "xmae_nobridge")
# Tests run tiny models a few steps: compile time dominates, and these XLA options halve it
# (same results, slightly slower code).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def load_config(name, arg="tiny,model.seq_len=400"):
  return config_lib.load(f"{REPO / 'configs' / name}.py:{arg}")


def paired_batch(batch=8, length=400, seed=0):
  """PPG-like smooth pulses and ECG-like spikes sharing one heart rate and phase per example,
  min-max scaled to [-1, 1] (ECG is predictable from PPG, as in real pairs)."""
  rng = np.random.default_rng(seed)
  t = np.arange(length) / 100.0
  hr = rng.uniform(0.9, 2.0, (batch, 1))
  phase = rng.uniform(0, 1, (batch, 1))
  cycle = (t[None] * hr + phase) % 1.0
  ppg = np.sin(2 * np.pi * cycle) + 0.3 * np.sin(4 * np.pi * cycle + 1.0)
  ecg = np.exp(-(((cycle - 0.5) * 12.0) ** 2)) - 0.2 * np.exp(-(((cycle - 0.8) * 6.0) ** 2))
  scale = lambda x: 2 * (x - x.min(1, keepdims=True)) / np.ptp(x, 1, keepdims=True) - 1  # noqa
  return {"ppg": jnp.asarray(scale(ppg), jnp.float32), "ecg": jnp.asarray(scale(ecg), jnp.float32)}


def make_step(model, batch, lr=2e-3):
  """One jitted AdamW step on `batch` (the only compilation per model). It returns the new
  state, the loss and metrics BEFORE the update and the gradients."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(lr, b2=0.95, weight_decay=0.01)

  def step(params, rest, opt_state, key):
    def f(p, r):  # copy=True: BatchNorm statistics are updated at this trace level
      m = nnx.merge(graphdef, p, r, copy=True)
      loss, metrics = m.loss(batch, key)
      return loss, (metrics, nnx.state(m, nnx.Not(nnx.Param)))

    (loss, (metrics, new_rest)), grads = jax.value_and_grad(f, has_aux=True)(params, rest)
    updates, new_opt = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new_rest, new_opt), loss, metrics, grads

  state = (params, rest, tx.init(params))
  compiled = jax.jit(step).lower(*state, jax.random.key(0)).compile(compiler_options=FAST_COMPILE)
  return compiled, state


def flat_leaves(tree):
  return {
      "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


# Parameters outside each loss by design: as in xMAE, the projection head of an MAE-style path
# is not reached by the reconstruction loss, and xMAE builds reference-only modules.
UNTRAINED = {
    "m2ae": (),
    "clip": (),
    "ppg_mae": ("proj",),
    "xmae_nobridge": ("proj", "mask_loc_table"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_jit_grad_and_loss_decreases(name):
  model = models.build(load_config(name), nnx.Rngs(0))
  step, state = make_step(model, paired_batch())
  eval_key = jax.random.key(123)
  _, before, metrics, grads = step(*state, eval_key)
  assert np.isfinite(float(before)) and float(metrics["loss"]) == pytest.approx(float(before))
  grads = flat_leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in grads.values())
  silent = [
      p for p, g in grads.items() if not np.any(g) and not any(u in p for u in UNTRAINED[name])
  ]
  assert not silent, f"{name}: no gradient reaches {silent[:5]}"
  if name == "xmae_nobridge":  # the reference would leave the PPG encoder without gradient
    assert any(np.any(g) for p, g in grads.items() if p.startswith("ppg_path/encoder/blocks"))
  if name == "m2ae":  # the total is the weighted sum of the reported parts
    w = model.weights
    parts = {
        "mse_ecg": "w_ecg",
        "mse_ppg": "w_ppg",
        "cross_mse_ecg": "w_cross_ecg",
        "cross_mse_ppg": "w_cross_ppg",
        "nce_cross": "w_contrast",
        "nce_augment": "w_augment",
    }
    total = sum(w[wk] * float(metrics[mk]) for mk, wk in parts.items())
    assert float(before) == pytest.approx(total, rel=1e-5)

  for i in range(40):
    state, _, _, _ = step(*state, jax.random.key(i))
  _, after, _, _ = step(*state, eval_key)
  assert float(after) < 0.7 * float(before), (name, float(before), float(after))


def abstract_model(name, arg="tiny,model.seq_len=400"):
  return nnx.eval_shape(lambda: models.build(load_config(name, arg), nnx.Rngs(0)))


def count_params(module):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_paper_preset_ppg_encoders_match_xmae():
  xmae = count_params(abstract_model("xmae_nobridge", "paper").encoder("ppg"))
  assert xmae == 2_301_700  # the reference's PPG encoder
  assert count_params(abstract_model("ppg_mae", "paper").encoder("ppg")) == xmae
  assert count_params(abstract_model("clip", "paper").encoder("ppg")) == xmae


@pytest.mark.parametrize("name", CONFIGS)
def test_embed_has_xmae_latent_size(name):
  model = abstract_model(name)
  model.eval()
  ppg = jax.ShapeDtypeStruct((3, 400), jnp.float32)
  latent = load_config("xmae").model.latent_dim
  assert jax.eval_shape(lambda m, x: m.embed(ppg=x), model, ppg).shape == (3, latent)
  assert jax.eval_shape(lambda m, x: m.encoder("ppg")(x), model, ppg).shape == (3, latent)


@pytest.mark.parametrize("name", ("clip", "m2ae"))
def test_subject_positives_need_subject_ids(name):
  model = abstract_model(name, "tiny,model.seq_len=400,loss.positives=subject")
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in paired_batch().items()}
  with pytest.raises(contrastive.MissingSubjectError):
    jax.eval_shape(lambda m, b: m.loss(b, jax.random.key(0)), model, batch)
  if name == "m2ae":
    return  # the same contrastive code as CLIP; tracing M2AE's loss twice is slow
  batch["subject"] = jax.ShapeDtypeStruct((8,), jnp.int32)
  loss, _ = jax.eval_shape(lambda m, b: m.loss(b, jax.random.key(0)), model, batch)
  assert loss.shape == ()
