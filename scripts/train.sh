#!/usr/bin/env bash
# Train on one node with torchrun, as the release does:
#   sh scripts/train.sh NGPUS PORT [dataset] [method] [split]
# dataset: pascal | cityscapes | coco | toy;  method: allspark | baseline_semi | baseline_sup
# split: e.g. 1464, 1_8 (Pascal), 1_16 (Cityscapes), 1_512 (COCO); lists under splits/<dataset>/<split>/.
# The log is tee'd to exp/<dataset>/<method>/<split>/<time>.log beside the checkpoints.
set -eu
if [ $# -lt 2 ]; then
  echo "usage: sh scripts/train.sh NGPUS PORT [dataset=pascal] [method=allspark] [split=1464]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
now=$(date +"%Y%m%d_%H%M%S")
ngpus=$1
port=$2
dataset=${3:-pascal}
method=${4:-allspark}
split=${5:-1464}

config=configs/${dataset}_${method}.yaml
labeled_id_path=splits/$dataset/$split/labeled.txt
unlabeled_id_path=splits/$dataset/$split/unlabeled.txt
[ "$dataset" = toy ] && labeled_id_path=splits/toy/labeled.txt && unlabeled_id_path=splits/toy/unlabeled.txt
save_path=exp/$dataset/$method/$split
mkdir -p "$save_path"

torchrun --nproc_per_node="$ngpus" --master_addr=localhost --master_port="$port" \
    train.py --config="$config" --labeled-id-path "$labeled_id_path" --unlabeled-id-path "$unlabeled_id_path" \
    --save-path "$save_path" --port "$port" 2>&1 | tee "$save_path/$now.log"
