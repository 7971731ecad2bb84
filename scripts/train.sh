#!/usr/bin/env bash
# Train on one node with torchrun, as the release does:
#   sh scripts/train.sh NGPUS PORT [dataset] [method] [split]
# dataset: pascal | cityscapes | coco | toy;  method: allspark | baseline_semi | baseline_sup | unimatch_v2
# split: e.g. 1464, 1_8 (Pascal), 1_16 (Cityscapes), 1_512 (COCO); lists under splits/<dataset>/<split>/.
# The log is tee'd to exp/<dataset>/<method>/<split>/<time>.log beside the checkpoints.
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh

torchrun --nproc_per_node="$ngpus" --master_addr=localhost --master_port="$port" \
    train.py --config="$config" --labeled-id-path "$labeled_id_path" --unlabeled-id-path "$unlabeled_id_path" \
    --save-path "$save_path" --port "$port" 2>&1 | tee "$save_path/$now.log"
