#!/usr/bin/env bash
# The demo on a fresh machine, CPU only: make the toy dataset if missing, train AllSpark with two
# processes (torchrun, gloo), then score best.pth and write image | ground truth | prediction panels.
#   bash scripts/demo.sh [method]      method: allspark (default) | baseline_semi | baseline_sup | unimatch_v2
#                                      | unimatch_v2_dinov3 (configs/toy_<method>.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
method=${1:-allspark}
save_path=exp/toy/$method/demo
[ -f data/toy/val.txt ] || python -m allspark.tools.toy --root data/toy
mkdir -p "$save_path"
start=$(date +%s)
OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 --master_addr=127.0.0.1 --master_port="${PORT:-29517}" \
    train.py --config "configs/toy_${method}.yaml" --labeled-id-path splits/toy/labeled.txt \
    --unlabeled-id-path splits/toy/unlabeled.txt --save-path "$save_path" 2>&1 | tee "$save_path/train.log"
python eval.py --config "configs/toy_${method}.yaml" --checkpoint "$save_path/best.pth" --save-vis "$save_path/vis" \
    2>&1 | tee "$save_path/eval.log"
echo "demo done in $(( $(date +%s) - start )) s: checkpoints, TensorBoard logs and $save_path/vis/*.png under $save_path"
