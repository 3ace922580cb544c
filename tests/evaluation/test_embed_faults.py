"""Input faults of `load_encoder(...).embed`: empty and complex input."""

import numpy as np
import pytest

from xmae_jax import errors
from xmae_jax.evaluation import encoder as encoder_lib


@pytest.fixture(scope="module")
def enc(tiny_package):
  return encoder_lib.load_encoder(tiny_package)


@pytest.mark.parametrize("shape,fs", [((0, 2500), 250), ((0, 1000), 100), ((0, 700), 100)])
def test_empty_input_gives_an_empty_result(enc, shape, fs):
  z = enc.embed(np.zeros(shape, np.float32), fs=fs)
  assert z.shape == (0, enc.latent_dim) and z.dtype == np.float32
  windows, rows = enc.prepare(np.zeros(shape), fs=fs)
  assert windows.shape == (0, enc.contract.segment_length) and rows.shape == (0,)


def test_complex_input_is_rejected_in_one_line(enc):
  x = np.ones((2, 2500)) + 1j * np.ones((2, 2500))
  with pytest.raises(encoder_lib.EncoderInputError) as e:
    enc.embed(x, fs=250)
  assert isinstance(e.value, errors.XmaeError) and "\n" not in str(e.value)
  assert "complex" in str(e.value)
  with pytest.raises(encoder_lib.EncoderInputError, match="complex"):
    enc.embed(x.astype(np.complex64).tolist(), fs=250)
  z = enc.embed(x.real, fs=250)  # its real part, asked for
  assert z.shape == (2, enc.latent_dim)
