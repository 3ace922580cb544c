"""Writes golden files from the reference PyTorch xMAE for the parity test
(tests/golden/test_golden.py).

The reference (github.com/hzhou3/xMAE) is NOT part of this project: this script extracts its
model module from a local clone at a named commit into a temporary directory (`git archive`),
imports it from there at run time, and only records what the model computes.

For each variant (bridge on: the paper's model; bridge off: MAE-style ECG decoding) it builds the
reference model, gives it random weights with trained-looking BatchNorm statistics (nonzero
running means, random positive running variances, non-trivial affine parameters and biases),
runs it in eval mode on fixed waveforms with given anchor masks, and writes one .npz:

  sd/flat, sd/index         the reference state dict, packed (few zip entries keep the file
                            small): one float32 vector and a JSON list of [name, shape, dtype]
  in/ppg, in/ecg            (B, L) inputs
  in/ids_keep_ecg           (B, Nk) visible ECG patches, ascending
  in/ids_restore_ecg        (B, N) the reference trainer's inverse permutation
  out/ecg_reconstructed     (B, L) eval-mode reconstruction
  out/ppg_embedding         (B, latent)
  out/seq_mask_used_ecg     (B, L) uint8, 1 on masked samples
  train_out/...             (bridge variant) the same from one TRAIN-mode forward (dropout 0)
  train_sd/flat, /index     (bridge variant) BatchNorm running statistics after that forward
  meta/config_json, meta/commit
Beside each .npz, `reference_shapes_<preset>_<variant>.json` lists the state dict's names and
shapes (the paper/bridge one is committed: the model tests check our layout against it).

Presets: "small" (d_model 16, 4 heads, stem 8 with widths 8/16/16, latent 16, depths 2/1/1,
a few hundred kB; committed under tests/golden/fixtures/) and "paper" (the reference's
cfg/xmae.yaml; ~26 MB per file, not committed). The reference's xMAE never passes `widths` to its
SinglePath (fixed 32/64/128), so for "small" both paths are rebuilt as the reference's own
SinglePath with small widths.

Remake the committed fixtures (needs torch, CPU build):
  git clone <the reference repository, hzhou3/xMAE on GitHub> /tmp/xMAE
  python tests/golden/make_reference_golden.py --reference-repo /tmp/xMAE --commit 7a0d24e \
      --preset small --out tests/golden/fixtures
Paper preset (then: XMAE_GOLDEN_DIR=/tmp/golden_paper pytest tests/golden):
  python tests/golden/make_reference_golden.py --reference-repo /tmp/xMAE --preset paper \
      --variants bridge --out /tmp/golden_paper
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

MODULE_PATH = "utils/model_arch/xmae.py"
PRESETS = {
    "small": dict(
        seq_len=1000,
        patch_len=40,
        d_model=16,
        nhead=4,
        depth_ppg=2,
        depth_ecg=1,
        depth_bridge=1,
        stem_ch=8,
        widths=(8, 16, 16),
        proj_dim=16,
    ),
    "paper": dict(
        seq_len=1000,
        patch_len=40,
        d_model=256,
        nhead=8,
        depth_ppg=2,
        depth_ecg=1,
        depth_bridge=1,
        stem_ch=32,
        widths=(32, 64, 128),
        proj_dim=256,
    ),
}
BATCH = 4
ANCHOR_STARTS = (0, 7, 20, 13)  # visible run starts (Nk = 5 of 25: mask ratio 0.8)
NUM_KEPT = 5


def import_reference(repo: str, commit: str, workdir: str):
  """Extracts the reference's model module at `commit` into `workdir` and imports it."""
  try:
    blob = subprocess.run(
        ["git", "-C", repo, "archive", commit, MODULE_PATH], check=True, capture_output=True
    ).stdout
  except subprocess.CalledProcessError as e:
    raise SystemExit(
        f"git archive {commit} {MODULE_PATH} in {repo} failed: " f"{e.stderr.decode().strip()}"
    ) from e
  with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
    tar.extractall(workdir, filter="data")
  spec = importlib.util.spec_from_file_location(
      "reference_xmae", os.path.join(workdir, MODULE_PATH)
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def build_reference(ref, preset: str, use_cross_bridge: bool):
  p = PRESETS[preset]
  cfg = ref.ModelCfg(
      seq_len=p["seq_len"],
      patch_len=p["patch_len"],
      d_model=p["d_model"],
      nhead=p["nhead"],
      depth_ecg=p["depth_ecg"],
      depth_ppg=p["depth_ppg"],
      depth_bridge=p["depth_bridge"],
      stem_ch=p["stem_ch"],
      dropout=0.0,
      proj_dim=p["proj_dim"],
      use_cross_bridge=use_cross_bridge,
  )
  model = ref.xMAE(cfg)
  if tuple(p["widths"]) != (32, 64, 128):
    for name, depth in (("ppg_path", p["depth_ppg"]), ("ecg_path", p["depth_ecg"])):
      setattr(
          model,
          name,
          ref.SinglePath(
              seq_len=p["seq_len"],
              patch_len=p["patch_len"],
              d_model=p["d_model"],
              proj_dim=p["proj_dim"],
              nhead=p["nhead"],
              depth=depth,
              stem_ch=p["stem_ch"],
              dropout=0.0,
              widths=tuple(p["widths"]),
          ),
      )
  return model


def randomize(model, seed: int) -> None:
  """Trained-looking parameters and BatchNorm statistics (torch init leaves many at 0 or 1)."""
  import torch  # pylint: disable=import-outside-toplevel

  g = torch.Generator().manual_seed(seed)
  rand = lambda t: torch.randn(t.shape, generator=g)  # noqa: E731
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith("num_batches_tracked"):
        t.fill_(7)
      elif name.endswith("running_mean"):
        t.copy_(0.2 * rand(t))
      elif name.endswith("running_var"):
        t.copy_(0.5 + 1.5 * torch.rand(t.shape, generator=g))
      elif name.endswith("bias"):
        t.add_(0.05 * rand(t))
      elif t.dim() == 1:  # LayerNorm / BatchNorm weights
        t.copy_(1.0 + 0.1 * rand(t))


def inputs(seq_len: int):
  rng = np.random.default_rng(0)
  t = np.arange(seq_len) / 100.0
  hr = rng.uniform(1.0, 1.8, size=(BATCH, 1))
  ecg = np.sin(2 * np.pi * hr * t) ** 15 + 0.05 * rng.standard_normal((BATCH, seq_len))
  ppg = np.sin(2 * np.pi * hr * (t - 0.2)) + 0.05 * rng.standard_normal((BATCH, seq_len))
  norm = lambda x: 2 * (x - x.min(1, keepdims=True)) / np.ptp(x, 1, keepdims=True) - 1  # noqa
  return norm(ppg).astype(np.float32), norm(ecg).astype(np.float32)


def anchor_ids(num_patches: int):
  """ids_keep (B, Nk) and ids_restore (B, N) as the reference trainer derives them."""
  mask = np.ones((BATCH, num_patches))
  for b, s in enumerate(ANCHOR_STARTS):
    mask[b, s : s + NUM_KEPT] = 0
  scores = np.arange(num_patches)[None] + (mask > 0) * num_patches
  ids_sorted = np.argsort(scores, axis=1, kind="stable")
  return ids_sorted[:, :NUM_KEPT], np.argsort(ids_sorted, axis=1, kind="stable")


def pack(state: dict, prefix: str) -> dict:
  """name -> array as one float32 vector plus a JSON index (exact for float32 and small ints);
  tests/helpers/golden.py reads it back."""
  index = [[k, list(v.shape), str(v.dtype)] for k, v in state.items()]
  flat = np.concatenate([np.asarray(v, np.float32).ravel() for v in state.values()])
  return {f"{prefix}/flat": flat, f"{prefix}/index": np.array(json.dumps(index))}


def run(model, ppg, ecg, keep, restore, train: bool):
  import torch  # pylint: disable=import-outside-toplevel

  model.train(train)
  with torch.no_grad():
    out = model(
        torch.from_numpy(ppg),
        torch.from_numpy(ecg),
        ids_keep_ecg=torch.from_numpy(keep),
        ids_restore_ecg=torch.from_numpy(restore),
    )
  return {
      "ecg_reconstructed": out["ecg_reconstructed"][:, 0].numpy(),
      "ppg_embedding": out["ppg_embedding"].numpy(),
      "seq_mask_used_ecg": out["seq_mask_used_ecg"][:, 0].numpy().astype(np.uint8),
  }


def make(ref, preset: str, variant: str, commit: str, out_dir: str) -> str:
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  bridge = variant == "bridge"
  model = build_reference(ref, preset, bridge)
  randomize(model, seed=1)
  p = PRESETS[preset]
  ppg, ecg = inputs(p["seq_len"])
  keep, restore = anchor_ids(p["seq_len"] // p["patch_len"])
  arrays = pack({k: v.numpy() for k, v in model.state_dict().items()}, "sd")
  arrays.update(
      {"in/ppg": ppg, "in/ecg": ecg, "in/ids_keep_ecg": keep, "in/ids_restore_ecg": restore}
  )
  arrays.update({f"out/{k}": v for k, v in run(model, ppg, ecg, keep, restore, False).items()})
  if bridge:  # one train-mode check is enough: BatchNorm updates do not depend on the bridge
    train = run(model, ppg, ecg, keep, restore, True)
    arrays["train_out/ecg_reconstructed"] = train["ecg_reconstructed"]
    arrays["train_out/ppg_embedding"] = train["ppg_embedding"]
    arrays.update(
        pack(
            {
                k: v.numpy()
                for k, v in model.state_dict().items()
                if k.endswith(("running_mean", "running_var"))
            },
            "train_sd",
        )
    )
  meta = dict(
      p,
      widths=list(p["widths"]),
      dropout=0.0,
      use_cross_bridge=bridge,
      batch=BATCH,
      preset=preset,
      variant=variant,
  )
  arrays["meta/config_json"] = np.array(json.dumps(meta))
  arrays["meta/commit"] = np.array(commit)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"xmae_{preset}_{variant}.npz")
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)
  shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
  shapes_path = os.path.join(out_dir, f"reference_shapes_{preset}_{variant}.json")
  with open(shapes_path + ".tmp", "w") as f:
    json.dump({"commit": commit, "config": meta, "shapes": shapes}, f, indent=0, sort_keys=True)
  os.replace(shapes_path + ".tmp", shapes_path)
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--reference-repo", required=True, help="a git clone of hzhou3/xMAE")
  parser.add_argument("--commit", default="7a0d24e")
  parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
  parser.add_argument("--variants", default="bridge,nobridge", help="comma list of bridge,nobridge")
  parser.add_argument("--out", required=True, help="output directory")
  args = parser.parse_args(argv)
  variants = [v for v in args.variants.split(",") if v]
  if not variants or any(v not in ("bridge", "nobridge") for v in variants):
    print(
        f"--variants {args.variants!r}: expected a comma list of bridge,nobridge", file=sys.stderr
    )
    return 2
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("make_reference_golden needs torch (CPU build)", file=sys.stderr)
    return 2
  with tempfile.TemporaryDirectory() as tmp:
    ref = import_reference(args.reference_repo, args.commit, tmp)
    for v in variants:
      path = make(ref, args.preset, v, args.commit, args.out)
      print(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
