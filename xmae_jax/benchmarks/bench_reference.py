"""`python -m xmae_jax.benchmarks reference`: our train step side by side with the reference's.

  python -m xmae_jax.benchmarks reference --reference-repo ~/src/xMAE --batch-size 64 --steps 10
  python -m xmae_jax.benchmarks reference --reference-repo ~/src/xMAE --commit 7a0d24e \
      --batch-size 256 --steps 6 --dtype bfloat16

For users with a checkout of the reference PyTorch code (github.com/hzhou3/xMAE; it is never
vendored into this project). Its `utils/model_arch/xmae.py` is imported at run time: from the
working tree, or with `--commit` from that commit (`git show`, so a bare clone works too).

In one process, on the same synthetic batch, configuration (the config file's model section,
paper preset by default), batch size and precision:
  * reference: the reference model trained as its Lightning module does it: an anchor ECG mask
    per example (ratio `masking.ratio_ecg`, PPG unmasked), its ids/sequence-mask convention, the
    masked-waveform MSE, AdamW (lr/betas/weight decay from the config) with the warm-up + cosine
    schedule stepped per update; bfloat16 = `torch.autocast("cpu", torch.bfloat16)` around
    forward and loss, as Lightning's "bf16-mixed". Lightning's own per-step bookkeeping (logging,
    hooks) is left out, which can only make the reference faster.
  * ours: the trainer's compiled step (see `xmae_jax.benchmarks.bench_train`).

The two run INTERLEAVED: after warm-up, `--rounds` rounds of `--steps` steps each of the
reference then ours, so load from other processes on a shared machine hits both alike; each
side's step time is the median over all its timed steps. Prints three JSON lines: the reference,
ours, and the comparison (`speedup` = our segments/s over the reference's). torch is an
optional extra (`pip install 'xmae-jax[torch]'`).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from xmae_jax.benchmarks import bench_common as common
from xmae_jax.benchmarks import bench_train as train_bench
from xmae_jax.training import perf

REFERENCE_MODEL_FILE = "utils/model_arch/xmae.py"


class ReferenceRepoError(ValueError):
  pass


def reference_source(repo: Path, commit: str | None) -> tuple[str, str]:
  """(source text of the reference model file, a description of where it came from)."""
  repo = Path(repo).expanduser()
  if not repo.exists():
    raise ReferenceRepoError(f"--reference-repo {repo}: no such directory")
  if commit is None:
    file = repo / REFERENCE_MODEL_FILE
    if not file.is_file():
      raise ReferenceRepoError(
          f"--reference-repo {repo}: {REFERENCE_MODEL_FILE} not found "
          "(pass --commit to read it from the repository's history)"
      )
    return file.read_text(), f"{repo} (working tree{_head(repo)})"
  try:
    text = subprocess.run(
        ["git", "-C", str(repo), "show", f"{commit}:{REFERENCE_MODEL_FILE}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    detail = getattr(e, "stderr", "") or str(e)
    raise ReferenceRepoError(
        f"--reference-repo {repo} --commit {commit}: cannot read "
        f"{REFERENCE_MODEL_FILE}: "
        f"{detail.strip().splitlines()[-1] if detail.strip() else e}"
    )
  return text, f"{repo} at {commit}"


def _head(repo: Path) -> str:
  try:
    sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f", HEAD {sha}"
  except (OSError, subprocess.CalledProcessError):
    return ""


def import_reference(repo: Path, commit: str | None, workdir: Path):
  """Imports the reference model module from a temporary copy (never from this package)."""
  common.import_torch()
  text, origin = reference_source(repo, commit)
  file = Path(workdir) / "reference_xmae.py"
  file.write_text(text)
  spec = importlib.util.spec_from_file_location("reference_xmae", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in ("xMAE", "ModelCfg"):
    if not hasattr(module, name):
      raise ReferenceRepoError(f"{origin}: {REFERENCE_MODEL_FILE} defines no {name}")
  return module, origin


def reference_model_cfg(module, config):
  """The reference's ModelCfg for our config's model section (paper preset = cfg/xmae.yaml)."""
  m = config.model
  if tuple(m.stem_widths) != (32, 64, 128):
    raise ReferenceRepoError(
        f"model.stem_widths {tuple(m.stem_widths)}: the reference's stem "
        "widths are fixed at (32, 64, 128)"
    )
  return module.ModelCfg(
      seq_len=int(m.seq_len),
      patch_len=int(m.patch_len),
      d_model=int(m.d_model),
      nhead=int(m.num_heads),
      depth_ecg=int(m.depth_ecg),
      depth_ppg=int(m.depth_ppg),
      depth_bridge=int(m.depth_bridge),
      stem_ch=int(m.stem_channels),
      dropout=float(m.dropout),
      proj_dim=int(m.latent_dim),
      use_cross_bridge=bool(m.use_cross_bridge),
      source="ppg+ecg",
  )


class ReferenceStep:
  """One optimizer step of the reference model, as its Lightning module trains it."""

  def __init__(
      self,
      module,
      config,
      batch: dict[str, np.ndarray],
      dtype: str,
      total_steps: int = 10_000,
      seed: int = 0,
  ):
    torch = common.import_torch()
    if config.masking.mode != "anchor" or config.masking.ratio_ppg:
      raise ReferenceRepoError(
          "the side-by-side benchmark uses the paper masking " "(anchor ECG masking, unmasked PPG)"
      )
    self.torch = torch
    torch.manual_seed(seed)
    self.generator = torch.Generator().manual_seed(seed)
    self.model = module.xMAE(reference_model_cfg(module, config))
    self.model.train()
    t = config.train
    self.optimizer = torch.optim.AdamW(
        self.model.parameters(),
        lr=float(t.lr),
        betas=(float(t.b1), float(t.b2)),
        weight_decay=float(t.weight_decay),
    )
    warmup = int(total_steps * float(t.warmup_frac))

    def lr_factor(step):
      if step < warmup:
        return step / max(1, warmup)
      return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
    self.autocast = dtype == "bfloat16"
    self.patch_len = int(config.model.patch_len)
    self.num_patches = int(config.model.seq_len) // self.patch_len
    self.num_masked = max(
        0, min(self.num_patches, int(round(float(config.masking.ratio_ecg) * self.num_patches)))
    )
    self.ppg = torch.from_numpy(batch["ppg"])
    self.ecg = torch.from_numpy(batch["ecg"])
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.cpu_times: list[float] = []

  def _anchor_ids(self, batch_size: int):
    """The reference trainer's anchor masking: per example one visible run of N - k patches at
    a uniform start; ids_keep = kept ascending, ids_restore = inverse of (kept, then masked)."""
    torch, n = self.torch, self.num_patches
    visible = n - self.num_masked
    start = torch.randint(0, n - visible + 1, (batch_size, 1), generator=self.generator)
    idx = torch.arange(n).expand(batch_size, n)
    masked = ((idx < start) | (idx >= start + visible)).float()
    order = torch.argsort(idx + masked * n, dim=1)
    ids_keep, ids_restore = order[:, :visible], torch.argsort(order, dim=1)
    seq_mask = masked.repeat_interleave(self.patch_len, dim=1).unsqueeze(1)  # (B, 1, L)
    return ids_keep, ids_restore, seq_mask

  def __call__(self):
    torch = self.torch
    b = self.ecg.shape[0]
    ids_keep, ids_restore, seq_mask = self._anchor_ids(b)
    identity = torch.arange(self.num_patches).expand(b, self.num_patches)  # PPG: ratio 0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
      out = self.model(
          self.ppg,
          self.ecg,
          ids_keep_ppg=identity,
          ids_restore_ppg=identity,
          ids_keep_ecg=ids_keep,
          ids_restore_ecg=ids_restore,
      )
      err = (out["ecg_reconstructed"] - self.ecg.unsqueeze(1)) ** 2
      loss = (seq_mask * err).sum() / seq_mask.sum().clamp_min(1.0)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    self.scheduler.step()
    return float(loss.detach())

  def run(self, steps: int) -> list[float]:
    return common.time_calls(self, lambda r: r, steps, self.cpu_times)


def compare(
    config,
    repo: Path,
    commit: str | None,
    batch_size: int,
    steps: int,
    rounds: int,
    dtype: str,
    warmup: int = 2,
    peak_size: int = 2048,
) -> list[dict]:
  """Runs both, interleaved; returns [reference record, ours, comparison]."""
  torch = common.import_torch()
  with tempfile.TemporaryDirectory(prefix="xmae_reference_") as tmp:
    module, origin = import_reference(repo, commit, Path(tmp))
    peaks = {
        "torch": common.torch_matmul_peak("float32", n=peak_size),
        "jax": perf.matmul_peak("float32", n=peak_size, repeats=5),
    }
    ours = train_bench.build_step(config, batch_size, dtype)
    host = train_bench.synthetic_batch(batch_size, int(config.model.seq_len))
    ref = ReferenceStep(module, ours.config, host, dtype)
    start = time.perf_counter()
    ref.run(warmup)
    ref_warmup_s = time.perf_counter() - start
    ours.run(warmup)
    ref.cpu_times.clear()
    ours.cpu_times.clear()
    ours.dispatch_times.clear()
    ref_times, our_times = [], []
    for _ in range(rounds):
      ref_times += ref.run(steps)
      our_times += ours.run(steps)
    peaks["torch"] = max(peaks["torch"], common.torch_matmul_peak("float32", n=peak_size))
    peaks["jax"] = max(peaks["jax"], perf.matmul_peak("float32", n=peak_size, repeats=5))
  our_record = train_bench.summarize(
      ours,
      our_times,
      peaks["jax"],
      dtype=dtype,
      warmup=warmup,
      device_kind=jax.devices()[0].device_kind,
  )
  flops = our_record["flops_per_step"]
  our_record["bench"] = "reference"
  our_record["matmul_peak_dtype"] = "float32"
  our_record["interleaved_rounds"] = rounds
  ref_step = common.median(ref_times)
  ref_record = {
      "bench": "reference",
      "impl": "reference_torch",
      "reference": origin,
      "torch": torch.__version__,
      "torch_threads": torch.get_num_threads(),
      "batch_size": batch_size,
      "dtype": dtype,
      "precision": "torch.autocast(cpu, bfloat16)" if dtype == "bfloat16" else "float32",
      "num_params": ref.num_params,
      "segments_per_s": batch_size / ref_step,
      "step_time_median_s": ref_step,
      "step_time_min_s": min(ref_times),
      "step_time_max_s": max(ref_times),
      "cpu_time_median_s": common.median(ref.cpu_times),
      "steps_timed": len(ref_times),
      "warmup_steps": warmup,
      "warmup_s": ref_warmup_s,
      # The same model and masking: our compiled step's FLOPs are the reference's work too.
      "flops_per_step": flops,
      "achieved_flops_per_s": flops / ref_step,
      "matmul_peak_flops_per_s": peaks["torch"],
      "matmul_peak_dtype": "float32",
      "mfu": flops / ref_step / peaks["torch"],
      "interleaved_rounds": rounds,
  }
  comparison = {
      "bench": "reference",
      "impl": "comparison",
      "batch_size": batch_size,
      "dtype": dtype,
      "speedup": our_record["segments_per_s"] / ref_record["segments_per_s"],
      "cpu_time_ratio": ref_record["cpu_time_median_s"] / our_record["cpu_time_median_s"],
      "segments_per_s": {
          "xmae_jax": our_record["segments_per_s"],
          "reference_torch": ref_record["segments_per_s"],
      },
      "matmul_peak_flops_per_s": peaks,
      "loadavg_1m": common.machine_info()["loadavg_1m"],
  }
  return [ref_record, our_record, comparison]


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog="python -m xmae_jax.benchmarks reference",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
      "--reference-repo",
      required=True,
      type=Path,
      help="a checkout (or clone) of github.com/hzhou3/xMAE",
  )
  p.add_argument(
      "--commit",
      default=None,
      help="read the model from this commit (e.g. 7a0d24e) instead of the work tree",
  )
  p.add_argument(
      "--config",
      default="configs/xmae.py",
      help="config file[:preset[,key=value...]] (default: configs/xmae.py, paper)",
  )
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--steps", type=int, default=5, help="timed steps per side per round")
  p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--peak-size", type=int, default=2048, help="n of the n^3 peak matmul")
  common.add_host_memory_flag(p)
  args = p.parse_args(argv)
  if min(args.batch_size, args.steps, args.rounds) <= 0 or args.warmup < 0:
    p.error("--batch-size, --steps and --rounds must be positive, --warmup non-negative")
  return args


def main(argv=None):
  args = parse_args(argv)
  host_malloc_tuned = common.apply_host_memory_flag(args)  # before JAX starts its threads
  try:
    config = train_bench.load_config(args.config)
    records = compare(
        config,
        args.reference_repo,
        args.commit,
        args.batch_size,
        args.steps,
        args.rounds,
        args.dtype,
        args.warmup,
        args.peak_size,
    )
  except (ReferenceRepoError, common.MissingExtraError, train_bench.BenchConfigError) as e:
    common.exit_with(str(e))
  for record in records:
    record["host_malloc_tuned"] = host_malloc_tuned
    common.emit(record)


if __name__ == "__main__":
  main()
