#!/usr/bin/env bash
#SBATCH --job-name=allspark
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=72:00:00
#SBATCH --output=slurm-%j.out
# Train on a SLURM cluster, one task per GPU (rank, world size and master from SLURM's variables):
#   sbatch scripts/slurm_train.sh NGPUS PORT [dataset] [method] [split]     (edit the header for your cluster)
#   bash scripts/slurm_train.sh NGPUS PORT ...                             (inside an salloc allocation)
# Same arguments as scripts/train.sh; the log goes to exp/<dataset>/<method>/<split>/<time>.log.
set -eu
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
. scripts/common.sh

srun --ntasks="$ngpus" --ntasks-per-node="$ngpus" --gres=gpu:"$ngpus" --kill-on-bad-exit=1 \
    python -u train.py --config="$config" --labeled-id-path "$labeled_id_path" \
    --unlabeled-id-path "$unlabeled_id_path" --save-path "$save_path" --port "$port" 2>&1 | tee "$save_path/$now.log"
