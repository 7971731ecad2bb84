#!/usr/bin/env bash
# Train on one node with torchrun, as the release does:
#   sh scripts/train.sh NGPUS PORT [dataset] [method] [split] [--config FILE] [--save-path DIR] [key=value ...]
#   sh scripts/train.sh 4 29500 pascal allspark 1464
#   sh scripts/train.sh 1 29500 cityscapes unimatch_v2 1_8 batch_size=1 amp=bf16
#   sh scripts/train.sh 1 29500 mine allspark 1_8 --config configs/mine.yaml
#   sh scripts/train.sh 4 29500 pascal allspark 1464 --seeds 0,1,2      (exp/pascal/allspark/1464/seed0/, ...)
# Arguments: scripts/common.sh (or --help). The log goes to exp/<dataset>/<method>/<split>/<time>.log beside
# the checkpoints; the script exits with the training's status (torchrun turns a worker's 3, "stopped with a
# checkpoint", into 1: the log says which). With --seeds the runs go one after the other and the first that
# does not end with status 0 ends the script; run the same command again to continue (finished seeds return
# at once, the stopped one resumes).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"  # `sh` may be dash: the launchers need bash
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

for seed in "${seed_list[@]}"; do
  set_run "$seed"
  run_logged torchrun --nproc_per_node="$ngpus" --master_addr=localhost --master_port="$port" "${train_args[@]}"
  [ "$status" = 0 ] || break
done
exit "$status"
