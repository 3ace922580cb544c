"""Masks (xmae_jax.models.masking): counts, modes, ordering, randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmae_jax.models import masking

N, P, B = 25, 40, 64


def _draw(mode, ratio=0.8, seed=0, batch=B):
  return np.asarray(masking.sample_keep_ids(jax.random.key(seed), batch, N, ratio, mode))


def _masks(keep):
  return np.asarray(masking.mask_from_keep(jnp.asarray(keep), N))


def test_counts_use_python_rounding():
  assert [masking.num_masked(r, N) for r in (0.0, 0.8, 0.85, 0.9, 1.0)] == [0, 20, 21, 22, 25]
  assert masking.num_kept(0.9, N) == 3  # 22.5 rounds to 22 (banker's), 3 visible
  with pytest.raises(masking.MaskingError):
    masking.num_masked(1.5, N)


@pytest.mark.parametrize("mode", masking.MODES)
@pytest.mark.parametrize("ratio", [0.5, 0.8, 0.9])
def test_every_mode_keeps_exactly_nk_ascending(mode, ratio):
  keep = _draw(mode, ratio)
  nk = masking.num_kept(ratio, N)
  assert keep.shape == (B, nk)
  assert np.all(np.diff(keep, axis=1) > 0)  # strictly ascending, so unique
  assert keep.min() >= 0 and keep.max() < N
  masks = _masks(keep)
  assert np.all(masks.sum(axis=1) == N - nk)
  assert len({tuple(r) for r in keep}) > 1  # different per example


def _contiguous(rows):
  return np.array([np.all(np.diff(r) == 1) for r in rows])


def test_anchor_is_one_contiguous_visible_run_at_random_starts():
  keep = _draw("anchor")
  assert _contiguous(keep).all()
  assert len(set(keep[:, 0])) >= 8  # starts spread over [0, N - Nk]
  assert keep[:, 0].max() <= N - 5


def test_block_masks_one_contiguous_run_and_scatter_does_not():
  block = _masks(_draw("block"))
  masked_runs = [np.flatnonzero(r) for r in block]
  assert _contiguous(masked_runs).all()
  scatter = [np.flatnonzero(r) for r in _masks(_draw("scatter"))]
  assert not _contiguous(scatter).all()
  mixed = [np.flatnonzero(r) for r in _masks(_draw("mixed"))]
  c = _contiguous(mixed)
  assert c.any() and not c.all()  # both kinds appear


def test_same_key_same_masks_other_key_other_masks():
  np.testing.assert_array_equal(_draw("scatter", seed=3), _draw("scatter", seed=3))
  assert not np.array_equal(_draw("scatter", seed=3), _draw("scatter", seed=4))


def test_static_shapes_under_jit():
  f = jax.jit(lambda k: masking.sample_keep_ids(k, 8, N, 0.85, "anchor"))
  out = f(jax.random.key(1))
  assert out.shape == (8, 4)
  np.testing.assert_array_equal(out, masking.sample_keep_ids(jax.random.key(1), 8, N, 0.85))


def test_edge_ratios():
  np.testing.assert_array_equal(_draw("anchor", 0.0, batch=2), np.tile(np.arange(N), (2, 1)))
  assert _draw("scatter", 1.0, batch=2).shape == (2, 0)


def test_restore_ids_invert_kept_then_masked_order():
  keep = _draw("scatter")
  restore = np.asarray(masking.restore_ids(jnp.asarray(keep), N))
  masked = np.stack([np.flatnonzero(r) for r in _masks(keep)])
  ids_sorted = np.concatenate([keep, masked], axis=1)
  np.testing.assert_array_equal(
      np.take_along_axis(ids_sorted, restore, axis=1), np.tile(np.arange(N), (B, 1))
  )


def test_sample_mask_repeats_patches():
  keep = _draw("anchor", batch=4)
  m = np.asarray(masking.sample_mask(jnp.asarray(keep), N, P))
  assert m.shape == (4, N * P)
  np.testing.assert_array_equal(m.reshape(4, N, P), np.repeat(_masks(keep)[..., None], P, -1))


def test_unknown_mode_is_an_error():
  with pytest.raises(masking.MaskingError, match="unknown mask mode"):
    masking.sample_keep_ids(jax.random.key(0), 2, N, 0.8, "random")
