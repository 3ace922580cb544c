"""The train, eval and reconstruction steps of a run, compiled on its mesh.

One variant per mask ratio (the curriculum changes it), each compiled once by every process
together (`distributed.CompiledTogether`); host batches are placed on the mesh here too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xmae_jax.data import pipeline
from xmae_jax.training import distributed
from xmae_jax.training import metric_window
from xmae_jax.training import perf
from xmae_jax.training import sharding
from xmae_jax.training import state as state_lib

FIGURE_KEY_SALT = 0x7FFFFFFE  # reconstruction masks: fold_in(PRNGKey(seed), SALT), fixed per run


class CompiledSteps:
  """The compiled train and eval steps on the mesh, one variant per mask ratio, and the
  placement of host batches.

  A train step variant is compiled ahead of its first call (`lower().compile()`, as `bench
  train` does), so its compilation is booked to `goodput`'s compile time and its FLOPs per
  device (`flops[ratio]`) are known for MFU.
  """

  def __init__(
      self, config, mesh, graphdef, tx, schedule, state_sh, goodput: perf.Goodput | None = None
  ):
    self.config, self.mesh, self.graphdef = config, mesh, graphdef
    self.tx, self.schedule, self.state_sh = tx, schedule, state_sh
    self.goodput = goodput or perf.Goodput()
    self.batch_axes = sharding.batch_axes(mesh, config.mesh)
    self.batch_sh = sharding.batch_sharding(mesh, config.mesh)
    self.metric_sh = sharding.replicated(mesh)
    self._train, self._eval, self._reconstruct = {}, {}, {}
    self.flops: dict[float | None, float | None] = {}

  def to_device(self, host_batch):
    return sharding.place_batch(host_batch, self.mesh, self.batch_axes)

  def train(self, ratio, state, batch):
    """The compiled train step of `ratio` for arguments shaped like `state` and `batch`."""
    if ratio not in self._train:
      with self.goodput.phase("compile"):
        step = distributed.CompiledTogether(
            state_lib.jit_train_step(
                self.graphdef,
                self.tx,
                self.schedule,
                self.config,
                ratio,
                self.state_sh,
                self.batch_sh,
                self.metric_sh,
            ),
            f"train_step_{ratio}",
        )
        step.compile(state, batch)
      self._train[ratio] = step
      self.flops[ratio] = perf.compiled_flops(step.compiled)
    return self._train[ratio]

  def evaluate(self, state, batches, ratio) -> dict[str, float]:
    """Mean validation metrics over `batches` (a host iterator, closed here)."""
    if ratio not in self._eval:
      self._eval[ratio] = distributed.CompiledTogether(
          state_lib.jit_eval_step(
              self.graphdef, self.config, ratio, self.state_sh, self.batch_sh, self.metric_sh
          ),
          f"eval_step_{ratio}",
      )
    fn = self._eval[ratio]
    rows = [
        state_lib.fetch(fn(state, self.to_device(b), jnp.uint32(i))) for i, b in enumerate(batches)
    ]
    pipeline.close(batches)
    return metric_window.mean_rows(rows)

  def reconstructions(self, state, host_batch, ratio, n: int) -> dict[str, np.ndarray]:
    """The first `n` rows of a batch and the model's ECG reconstruction (`reconstruct_ecg`),
    replicated, so every process holds them (process 0 draws them)."""
    key = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), FIGURE_KEY_SALT)

    def reconstruct(params, batch_stats, b):
      model = state_lib.merge_model(self.graphdef, params, batch_stats)
      model.eval()
      got = model.reconstruct_ecg(b["ppg"], b["ecg"], key, mask_ratio=ratio)
      return {
          "ppg": b["ppg"][:n],
          "ecg": b["ecg"][:n],
          "rec": got["ecg_reconstruction"][:n],
          "masked": got["ecg_masked"][:n],
      }

    if (ratio, n) not in self._reconstruct:
      self._reconstruct[ratio, n] = distributed.CompiledTogether(
          jax.jit(reconstruct, out_shardings=self.metric_sh), f"reconstruct_{ratio}"
      )
    return state_lib.fetch(
        self._reconstruct[ratio, n](
            state["params"], state["batch_stats"], self.to_device(host_batch)
        )
    )
