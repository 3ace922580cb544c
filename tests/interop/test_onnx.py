"""ONNX export of a package (xmae_jax.interop.onnx_export, extra `onnx`): onnxruntime runs it to
the numbers of `load_encoder(...).embed_prepared`. The test extra installs both; skipped without
jax2onnx and onnxruntime."""

import numpy as np
import pytest

pytest.importorskip("jax2onnx")
ort = pytest.importorskip("onnxruntime")

import xmae_jax  # noqa: E402
from tests.helpers import datasets  # noqa: E402
from tests.helpers import tiny_models  # noqa: E402
from xmae_jax.interop import onnx_export  # noqa: E402


def test_onnx_model_runs_in_onnxruntime_to_the_same_numbers(tmp_path, physionet_dir):
  package = tiny_models.tiny_package(tmp_path / "xmae", "xmae", "ppg", seed=3)
  (path,) = onnx_export.write_onnx(package)
  assert path.name == "onnx-ppg.onnx"
  enc = xmae_jax.load_encoder(package)
  ppg, fs = datasets.record_rows(physionet_dir, "PLETH")
  windows, _ = enc.prepare(ppg, fs)
  sess = ort.InferenceSession(str(path))
  assert [i.name for i in sess.get_inputs()] == ["ppg"]
  z = sess.run(None, {"ppg": windows})[0]
  np.testing.assert_allclose(z, enc.embed_prepared(windows), atol=1e-5, rtol=0)
