"""xMAE model: parameter layout and counts, call contract, modes, dtypes, gradients, training."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from xmae_jax import config_lib
from xmae_jax.interop import reference
from xmae_jax.models import build
from xmae_jax.models import losses
from xmae_jax.models import masking
from xmae_jax.models.xmae import XMAE

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "tests" / "golden" / "fixtures" / "reference_shapes_paper_bridge.json"


def get_config(arg="tiny"):
  return config_lib.load(f"{REPO / 'configs' / 'xmae.py'}:{arg}")


def n_params(module):
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def abstract(config):
  return nnx.eval_shape(lambda: XMAE(config, rngs=nnx.Rngs(0)))


@jax.jit
def forward(model, ppg, ecg, keep, key=None):
  return model(ppg, ecg, keep, key=key), model


def waves(batch=4, seed=0):
  r = np.random.default_rng(seed)
  t = np.arange(1000) / 100.0
  hr = r.uniform(1.0, 1.6, (batch, 1))
  ecg = np.sin(2 * np.pi * hr * t) ** 9 + 0.05 * r.standard_normal((batch, 1000))
  ppg = np.sin(2 * np.pi * hr * (t - 0.25)) + 0.05 * r.standard_normal((batch, 1000))
  return jnp.asarray(ppg, jnp.float32), jnp.asarray(ecg, jnp.float32)


KEEP = jnp.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11], [20, 21, 22, 23, 24], [3, 4, 5, 6, 7]])


@pytest.fixture(scope="module")
def tiny():
  model = build(get_config("tiny"), nnx.Rngs(0))
  model.eval()
  return model


# ------------------------------------------------------------------ layout (paper preset)
def test_paper_parameter_counts():
  model = abstract(get_config("paper"))
  assert n_params(model) == 6_481_930  # the reference's total
  assert n_params(model.encoder("ppg")) == 2_301_700  # the transferred PPG encoder
  lean = get_config("paper")
  lean.model.build_unused = False
  unused = (
      527_104
      + 40 * 256
      + 1
      + 25 * 256  # PPG dec_blk, decoder, mask_loc_table
      + 66_304
      + 790_272
      + 256
  )  # ECG proj, bridger.ppg2ecg, mask_token
  assert n_params(abstract(lean)) == 6_481_930 - unused


def test_paper_shapes_equal_the_reference_state_dict():
  ref = {k: tuple(v) for k, v in json.loads(SHAPES.read_text())["shapes"].items()}
  ours = reference.reference_shapes(abstract(get_config("paper")))
  assert set(ours) == set(ref)
  assert {k: v for k, v in ours.items() if ref[k] != v} == {}


# ------------------------------------------------------------------------- call contract
def test_eval_call_contract(tiny):
  ppg, ecg = waves()
  out, _ = forward(tiny, ppg, ecg, KEEP)
  assert out["ecg_reconstruction"].shape == (4, 1000)
  assert out["ppg_embedding"].shape == (4, 32)
  assert out["ecg_reconstruction"].dtype == jnp.float32
  mask = np.asarray(out["ecg_mask"])
  np.testing.assert_array_equal(mask.sum(1), [800] * 4)
  assert mask[1, 7 * 40 : 12 * 40].sum() == 0 and mask[1, : 7 * 40].all()
  again, _ = forward(tiny, ppg, ecg, KEEP)  # eval: deterministic
  np.testing.assert_array_equal(out["ecg_reconstruction"], again["ecg_reconstruction"])
  # The exported encoder and embed() give the same PPG embedding as the full forward.
  emb = jax.jit(lambda m, x: m.encoder("ppg")(x))(tiny, ppg)
  np.testing.assert_allclose(emb, out["ppg_embedding"], atol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda m, x: m.embed(ppg=x))(tiny, ppg), emb, atol=1e-6)
  with pytest.raises(ValueError):
    tiny.embed(ecg=ecg)


def test_bridge_reads_ppg_and_no_bridge_does_not(tiny):
  ppg, ecg = waves()
  other = ppg[::-1]
  a, _ = forward(tiny, ppg, ecg, KEEP)
  b, _ = forward(tiny, other, ecg, KEEP)
  assert float(jnp.max(jnp.abs(a["ecg_reconstruction"] - b["ecg_reconstruction"]))) > 1e-3
  cfg = get_config("tiny")
  cfg.model.use_cross_bridge = False
  nob = XMAE(cfg, rngs=nnx.Rngs(0))
  nob.eval()
  assert nob.bridge is None and nob.mask_token is not None
  a, _ = forward(nob, ppg, ecg, KEEP)
  b, _ = forward(nob, other, ecg, KEEP)
  np.testing.assert_array_equal(a["ecg_reconstruction"], b["ecg_reconstruction"])
  assert not np.array_equal(a["ppg_embedding"], b["ppg_embedding"])


def test_visible_positions_switch():
  """ "compact" (reference) encodes visible ECG with pos[0..Nk-1], "true" with pos[ids]: they
  agree exactly when the visible run starts at patch 0 and differ elsewhere."""
  cfg = get_config("tiny")
  compact = XMAE(cfg, rngs=nnx.Rngs(0))
  cfg.model.visible_positions = "true"
  true = XMAE(cfg, rngs=nnx.Rngs(0))
  compact.eval()
  true.eval()
  ppg, ecg = waves()
  a, _ = forward(compact, ppg, ecg, KEEP)
  b, _ = forward(true, ppg, ecg, KEEP)
  diff = np.max(np.abs(np.asarray(a["ecg_reconstruction"] - b["ecg_reconstruction"])), axis=1)
  assert diff[0] < 1e-5 and np.all(diff[1:] > 1e-4)
  cfg.model.visible_positions = "sorted"
  with pytest.raises(ValueError, match="visible_positions"):
    XMAE(cfg, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- train / eval
def test_train_mode_uses_dropout_and_updates_batchnorm():
  model = XMAE(get_config("tiny"), rngs=nnx.Rngs(0))
  ppg, ecg = waves()
  stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  model.eval()
  out_eval, m_eval = forward(model, ppg, ecg, KEEP)
  jax.tree.map(
      np.testing.assert_array_equal,
      stats_before,
      jax.tree.map(np.asarray, nnx.state(m_eval, nnx.BatchStat)),
  )
  model.train()
  a, m_train = forward(model, ppg, ecg, KEEP, jax.random.key(1))
  b, _ = forward(model, ppg, ecg, KEEP, jax.random.key(1))
  c, _ = forward(model, ppg, ecg, KEEP, jax.random.key(2))
  np.testing.assert_array_equal(a["ecg_reconstruction"], b["ecg_reconstruction"])
  assert not np.allclose(a["ecg_reconstruction"], c["ecg_reconstruction"])  # dropout
  assert not np.allclose(a["ecg_reconstruction"], out_eval["ecg_reconstruction"])
  moved = jax.tree.map(
      lambda x, y: not np.allclose(x, np.asarray(y)),
      stats_before,
      nnx.state(m_train, nnx.BatchStat),
  )
  assert all(jax.tree.leaves(moved))  # every BatchNorm saw the batch
  with pytest.raises(ValueError, match="key"):
    model(ppg, ecg, KEEP)  # training mode without a dropout key


def test_bfloat16_compute_stays_close_to_float32(tiny):
  cfg = get_config("tiny")
  cfg.train.compute_dtype = "bfloat16"
  bf = XMAE(cfg, rngs=nnx.Rngs(1))
  nnx.update(bf, nnx.state(tiny))
  bf.eval()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf, nnx.Param)))
  ppg, ecg = waves()
  a, _ = forward(tiny, ppg, ecg, KEEP)
  b, _ = forward(bf, ppg, ecg, KEEP)
  assert b["ecg_reconstruction"].dtype == jnp.float32
  for k in ("ecg_reconstruction", "ppg_embedding"):
    scale = float(jnp.max(jnp.abs(a[k])))
    err = float(jnp.max(jnp.abs(a[k] - b[k])))
    assert 0 < err < 0.05 * scale, (k, err, scale)


def test_ppg_masking_adds_ppg_reconstruction_term():
  cfg = get_config("tiny")
  cfg.masking.ratio_ppg, cfg.loss.w_ppg = 0.4, 0.5
  model = XMAE(cfg, rngs=nnx.Rngs(0))
  model.eval()
  ppg, ecg = waves()
  loss, metrics = jax.jit(lambda m, b, k: m.loss(b, k))(
      model, {"ppg": ppg, "ecg": ecg}, jax.random.key(0)
  )
  assert set(metrics) >= {"loss", "mse_ecg", "mse_ppg"}
  np.testing.assert_allclose(loss, metrics["mse_ecg"] + 0.5 * metrics["mse_ppg"], rtol=1e-6)


def test_tree_mode_split_merge():
  model = XMAE(get_config("tiny"), rngs=nnx.Rngs(0))
  model.eval()
  ppg, ecg = waves()
  ref, _ = forward(model, ppg, ecg, KEEP)
  with nnx.set_graph_mode(False):
    graphdef, state = nnx.split(model)
    again = nnx.merge(graphdef, state)
  out, _ = forward(again, ppg, ecg, KEEP)
  np.testing.assert_array_equal(ref["ecg_reconstruction"], out["ecg_reconstruction"])


# -------------------------------------------------------------------------------- training
def synthetic_windows(subjects=4, minutes=1.0):
  """10-s paired windows (hop 5 s) from the project's physiological simulator, min-max to
  [-1, 1] per window as the pipeline does."""
  from xmae_jax.data.sources import synthetic

  wins = []
  for i in range(subjects):
    rec = synthetic.simulate_subject(0, i, minutes=minutes, fs=100.0)
    ppg, ecg = rec.signals["ppg"][0], rec.signals["ecg"][0]
    for s in range(0, len(ecg) - 1000 + 1, 500):
      w = np.stack([ppg[s : s + 1000], ecg[s : s + 1000]])
      lo, hi = w.min(1, keepdims=True), w.max(1, keepdims=True)
      wins.append(2 * (w - lo) / (hi - lo) - 1)
  return np.asarray(wins, np.float32)


@pytest.fixture(scope="module")
def trained():
  """A few hundred AdamW steps on the tiny preset; returns the first step's gradients too."""
  config = get_config("tiny")
  wins = synthetic_windows()
  model = build(config, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adamw(3e-3, b1=0.9, b2=0.95, weight_decay=0.01)
  opt = tx.init(params)

  @jax.jit
  def step(params, rest, opt, batch, key):
    def loss_fn(p, rest):
      m = nnx.merge(graphdef, p, rest, copy=True)
      m.train()
      loss, _ = m.loss(batch, key)
      return loss, nnx.state(m, nnx.Not(nnx.Param))

    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), rest, opt, loss, grads

  rng = np.random.default_rng(0)
  first_grads, losses_seen = None, []
  for i in range(250):
    idx = rng.choice(len(wins), 16, replace=False)
    batch = {"ppg": jnp.asarray(wins[idx, 0]), "ecg": jnp.asarray(wins[idx, 1])}
    params, rest, opt, loss, grads = step(params, rest, opt, batch, jax.random.key(i))
    losses_seen.append(float(loss))
    if first_grads is None:
      first_grads = grads
  model = nnx.merge(graphdef, params, rest)
  model.eval()
  return model, wins, first_grads, losses_seen


def test_gradients_reach_what_the_loss_uses_and_not_the_rest(trained):
  _, _, grads, losses_seen = trained
  assert np.isfinite(losses_seen).all()
  norms = {
      "".join(map(str, path)): float(jnp.linalg.norm(g))
      for path, g in jax.tree_util.tree_leaves_with_path(
          nnx.to_pure_dict(grads), is_leaf=lambda x: isinstance(x, jax.Array)
      )
  }

  def total(prefix):
    return sum(v for k, v in norms.items() if k.startswith(prefix))

  for used in (
      "['ppg_path']['encoder']['stem']",
      "['ppg_path']['encoder']['blocks']",
      "['ecg_path']['encoder']",
      "['ecg_path']['mask_loc_table']",
      "['bridge']",
      "['ecg_path']['dec_block']",
      "['ecg_path']['decoder']",
  ):
    assert total(used) > 0, used
  # The reference's quirks: the PPG projection head and the unused modules get no gradient.
  for unused in (
      "['ppg_path']['encoder']['proj",
      "['ecg_path']['encoder']['proj",
      "['ppg_path']['dec_block']",
      "['ppg_path']['decoder']",
      "['ppg_path']['mask_loc_table']",
      "['bridge_unused']",
      "['mask_token']",
  ):
    assert total(unused) == 0, unused


def test_training_beats_predicting_the_batch_mean(trained):
  model, wins, _, _ = trained
  batch = {"ppg": jnp.asarray(wins[:, 0]), "ecg": jnp.asarray(wins[:, 1])}
  key = jax.random.key(123)
  loss, metrics = jax.jit(lambda m, b, k: m.loss(b, k))(model, batch, key)
  ecg_keep, _ = model.sample_masks(jax.random.split(key)[0], len(wins))
  mask = masking.sample_mask(ecg_keep, model.num_patches, model.patch_len)
  mean_pred = jnp.full_like(batch["ecg"], jnp.mean(batch["ecg"]))
  baseline = float(losses.masked_mse(mean_pred, batch["ecg"], mask))
  print(f"masked-ECG MSE {float(metrics['mse_ecg']):.4f}, batch-mean baseline {baseline:.4f}")
  assert float(metrics["mse_ecg"]) < 0.75 * baseline, (float(metrics["mse_ecg"]), baseline)


# ------------------------------------------------------------- layers against torch directly
@pytest.mark.parametrize("n_in,n_out", [(50, 100), (7, 13), (10, 25), (6, 6), (9, 4)])
def test_upsample_linear_matches_torch_interpolate(n_in, n_out):
  torch = pytest.importorskip("torch")
  from xmae_jax.models import stem

  x = np.random.default_rng(0).normal(size=(2, 3, n_in)).astype(np.float32)  # torch (B, C, L)
  want = torch.nn.functional.interpolate(
      torch.from_numpy(x), size=n_out, mode="linear", align_corners=False
  ).numpy()
  got = np.asarray(stem.upsample_linear(jnp.asarray(x.transpose(0, 2, 1)), n_out))
  np.testing.assert_allclose(got.transpose(0, 2, 1), want, atol=2e-6)


def test_batchnorm_matches_torch_in_train_and_eval():
  torch = pytest.importorskip("torch")
  from xmae_jax.models import layers

  x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 30)).astype(np.float32)
  tbn = torch.nn.BatchNorm1d(5)
  bn = layers.BatchNorm(5)
  for _ in range(2):  # two training updates, then eval
    want = tbn.train()(torch.from_numpy(x)).detach().numpy()
    got = np.asarray(bn(jnp.asarray(x.transpose(0, 2, 1)))).transpose(0, 2, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(bn.mean[...], tbn.running_mean.numpy(), rtol=1e-6)
  np.testing.assert_allclose(bn.var[...], tbn.running_var.numpy(), rtol=1e-6)  # unbiased
  bn.use_running_average = True
  want = tbn.eval()(torch.from_numpy(x)).detach().numpy()
  np.testing.assert_allclose(
      np.asarray(bn(jnp.asarray(x.transpose(0, 2, 1)))).transpose(0, 2, 1), want, atol=1e-5
  )
