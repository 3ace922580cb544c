#!/usr/bin/env bash
# README command 1: set up, prepare the embedded simulator dataset, pretrain xMAE on CPU,
# export the PPG encoder, and compare it with a randomly initialized encoder on the demo data.
# Everything lands under ${DEMO_DIR:-demo}/ ; a re-run reuses what is already there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/launch/setup_env.sh" train
cd "$root"
py=.venv/bin/python
out="${DEMO_DIR:-demo}"
export TF_CPP_MIN_LOG_LEVEL=2

echo "== 1/4 prepare: synthetic paired ECG+PPG (simulator -> cleaning -> quality -> shards)"
$py -m xmae_jax.cli.xmae_prepare --source synthetic --num-subjects 40 --minutes-per-subject 3 \
  --workers 2 --seed 0 --output "$out/data"

echo "== 2/4 pretrain: xMAE paper model, demo preset (CPU)"
$py -m xmae_jax.cli.xmae_train --config configs/xmae.py:demo --workdir "$out/xmae" \
  --config.data.dir "$out/data"

echo "== 3/4 export: the frozen PPG encoder package"
$py -m xmae_jax.cli.xmae_export --workdir "$out/xmae" --output "$out/encoder" --step best --overwrite

echo "== 4/4 probe: pretrained vs randomly initialized PPG encoder (subject-grouped folds)"
# `random` is the run's own starting point (same architecture, same initialization seed).
$py -m xmae_jax.cli.xmae_compare --data "$out/data" --output-dir "$out/compare" \
  --encoder xmae="$out/encoder" --random random="$out/xmae" --random-seed 0 \
  --task hr --task ptt --task pvc --task age --baseline random   # prints the table
echo "Done: encoder in $out/encoder, probe table in $out/compare/"
