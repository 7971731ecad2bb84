#!/usr/bin/env bash
#SBATCH --job-name=allspark
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=72:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --signal=USR1@180
#SBATCH --requeue
# Train on a SLURM cluster, one task per GPU (rank, world size and master from SLURM's variables):
#   sbatch scripts/slurm_train.sh NGPUS PORT [dataset] [method] [split] [...]   (edit the header for your cluster)
#   bash scripts/slurm_train.sh NGPUS PORT ...                                 (inside an salloc allocation)
# Same arguments as scripts/train.sh (scripts/common.sh, --seeds included); the log goes to
# exp/<dataset>/<method>/<split>/<time>.log;
# the script exits with the training's status (SLURM marks a failed run FAILED). Preemption: SLURM's SIGTERM,
# or SIGUSR1 180 s before the time limit (--signal above), makes every task finish its step, write
# latest.pth and exit 3; the script then requeues the job (scontrol requeue), which resumes from latest.pth.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
. scripts/common.sh

if [ "$dry_run" != 1 ] && ! command -v srun >/dev/null 2>&1; then
  echo "$(basename "$0"): srun not found: run it with sbatch or inside an salloc allocation (scripts/train.sh" \
       "launches with torchrun instead)" >&2
  exit 127
fi
# SLURM signals this script too on preemption: wait for the tasks (they checkpoint), then requeue
trap 'echo "$(basename "$0"): stop signal received: the tasks finish their step and checkpoint" >&2' TERM USR1
for seed in "${seed_list[@]}"; do  # (with --seeds, a requeued job passes the finished seeds at once)
  set_run "$seed"
  train_args[0]=$(pwd)/train.py
  run_logged srun --ntasks="$ngpus" --ntasks-per-node="$ngpus" --gres=gpu:"$ngpus" --kill-on-bad-exit=1 \
      python -u "${train_args[@]}"
  [ "$status" = 0 ] || break
done
if [ "$status" = 3 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
  echo "$(basename "$0"): requeueing job $SLURM_JOB_ID" | tee -a "$log"
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
