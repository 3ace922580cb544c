"""The faster formulations in `xmae_jax.models.layers` compute what the plain ones compute:
`linear`'s weight gradient, the erf GELU, one-pass batch moments, hashed dropout masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmae_jax.models import layers


@pytest.mark.parametrize("x_shape,k_shape", [((4, 7, 16), (16, 40)), ((6, 40), (40, 16))])
def test_linear_gradients_match_plain_matmul(x_shape, k_shape):
  # Both backward branches: the activation narrower than the output gradient, and wider.
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, k_shape)
  g = jax.random.normal(kg, x_shape[:-1] + k_shape[-1:])

  def grads(matmul):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(matmul(x, w) * g), argnums=(0, 1)))(x, w)

  for got, want in zip(grads(layers.linear), grads(jnp.matmul)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers.linear(x, w), x @ w, rtol=1e-6)


def test_gelu_is_the_exact_gelu_with_its_gradient():
  x = jnp.linspace(-8.0, 8.0, 4001)
  np.testing.assert_allclose(layers.gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
  dx = jax.vmap(jax.grad(layers.gelu))(x)
  want = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
  np.testing.assert_allclose(dx, want, atol=2e-6)
  torch = pytest.importorskip("torch")
  ref = torch.nn.functional.gelu(torch.from_numpy(np.array(x))).numpy()
  np.testing.assert_allclose(layers.gelu(x), ref, atol=1e-6)


def test_batch_moments_are_exact_for_data_far_from_zero():
  # mean 1000, std 0.1: E[x^2] - E[x]^2 without the shift would lose every digit in float32.
  x = np.random.default_rng(0).normal(1000.0, 0.1, size=(8, 300, 3)).astype(np.float32)
  mean, var = layers.batch_moments(jnp.asarray(x), (0, 1))
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(mean, x64.mean(axis=(0, 1)), rtol=1e-6)
  np.testing.assert_allclose(var, x64.var(axis=(0, 1)), rtol=1e-4)


@pytest.mark.parametrize("shape", [(8, 300, 3), (4, 50, 6), (3, 20, 2), (200, 5), (2, 4, 10, 3)])
def test_leading_rows_are_the_first_rows_bit_for_bit(shape):
  # (4, 50, 6): the 64 rows span two examples; (3, 20, 2): fewer rows than 64.
  x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
  x.reshape(-1)[:7] = [-0.0, np.inf, -np.inf, 0.0, 1e-30, -3.0, 7.0]  # XLA:CPU flushes subnormals
  got = jax.jit(lambda v: layers.leading_rows(v, 64))(jnp.asarray(x))
  want = x.reshape(-1, shape[-1])[:64]
  assert got.shape == want.shape
  np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_batchnorm_gradient_matches_the_two_pass_form():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 50, 6)).astype(np.float32))
  r = jnp.asarray(rng.normal(size=(4, 50, 6)).astype(np.float32))

  def two_pass(x, axes):
    mean = jnp.mean(x, axis=axes)
    return mean, jnp.mean(jnp.square(x - mean), axis=axes)

  def loss(x, moments):
    mean, var = moments(x, (0, 1))
    return jnp.sum((x - mean) * jax.lax.rsqrt(var + 1e-5) * r)

  got = jax.grad(loss)(x, layers.batch_moments)
  want = jax.grad(loss)(x, two_pass)
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_keep_mask_is_deterministic_per_key_and_unbiased():
  key = jax.random.key(3)
  mask = np.asarray(layers.keep_mask(key, 0.9, (64, 8, 25, 25)))
  assert mask.dtype == bool
  np.testing.assert_array_equal(mask, np.asarray(layers.keep_mask(key, 0.9, (64, 8, 25, 25))))
  other = np.asarray(layers.keep_mask(jax.random.split(key)[1], 0.9, (64, 8, 25, 25)))
  n = mask.size
  # Independent keys agree where both keep or both drop: 0.9^2 + 0.1^2.
  assert abs((mask == other).mean() - 0.82) < 5 * np.sqrt(0.82 * 0.18 / n)
  for p in (0.9, 0.5, 0.1):
    draws = np.concatenate(
        [
            np.asarray(layers.keep_mask(k, p, (1000, 100))).ravel()
            for k in jax.random.split(jax.random.key(7), 10)
        ]
    )
    assert abs(draws.mean() - p) < 5 * np.sqrt(p * (1 - p) / draws.size)
  # Neighbours along the flattened mask are uncorrelated.
  flat = mask.ravel().astype(np.float64)
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 5 / np.sqrt(n)
  raw = np.asarray(layers.keep_mask(jnp.array([1, 2], jnp.uint32), 0.5, (1000,)))
  assert 0.4 < raw.mean() < 0.6
