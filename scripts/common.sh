# Sourced (by bash, from the project root) by train.sh and slurm_train.sh to read their arguments:
#   NGPUS PORT [dataset] [method] [split] [--config FILE] [--save-path DIR] [--seeds 0,1,2] [--time-limit D] [--dry-run] [key=value ...]
#   dataset: pascal | cityscapes | coco | ade20k | toy | a dataset of your own (with --config)
#   method:  a config under configs/<dataset>_<method>.yaml (allspark, unimatch_v2, allspark_dinov2,
#            baseline_semi, baseline_sup, ...) or train.py's method names (allspark, unimatch_v2, semi, sup);
#            with --config, train.py's --method (default: the config's own method)
#   split:   a folder under splits/<dataset>/ (default: pascal 1464, cityscapes 1_16, coco 1_512, ade20k 1_64),
#            or the path of any folder that holds labeled.txt and unlabeled.txt
#   --seeds:   one run per seed, one after the other, each in <save path>/seed<k>/ (default: one run, seed 0)
#   key=value: config overrides, passed to train.py as --opts (e.g. epochs=2 batch_size=1 amp=bf16)
# Sets: ngpus port dataset method split config save_path seeds; set_run [SEED] sets run_path, log and train_args
# (train.py and its arguments) for one run.
# Checks the arguments and the split lists before anything is written; the run's log is
# <save path>/<time>.log. The scripts exit with train.py's status (0 done, 2 a clear error, 3 stopped with a
# checkpoint: preempted, signalled or out of time; slurm_train.sh then requeues the job).

usage() {
  sed -n '2,10p' scripts/common.sh | sed 's/^#   //' | sed "1s|^|usage: $(basename "$0") |"
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

positional=()
overrides=()
config=""
save_path=""
time_limit=""
seeds=""
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ $# -ge 2 ] || die "--config needs a file"; config=$2; shift 2 ;;
    --config=*) config=${1#*=}; shift ;;
    --save-path) [ $# -ge 2 ] || die "--save-path needs a folder"; save_path=$2; shift 2 ;;
    --save-path=*) save_path=${1#*=}; shift ;;
    --seeds) [ $# -ge 2 ] || die "--seeds needs a list, e.g. 0,1,2"; seeds=$2; shift 2 ;;
    --seeds=*) seeds=${1#*=}; shift ;;
    --time-limit) [ $# -ge 2 ] || die "--time-limit needs a duration"; time_limit=$2; shift 2 ;;
    --time-limit=*) time_limit=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *=*) overrides+=("$1"); shift ;;
    *) positional+=("$1"); shift ;;
  esac
done
if [ ${#positional[@]} -lt 2 ] || [ ${#positional[@]} -gt 5 ]; then
  usage >&2
  exit 2
fi
ngpus=${positional[0]}
port=${positional[1]}
dataset=${positional[2]:-pascal}
method=${positional[3]:-}
split=${positional[4]:-}
case "$ngpus" in ''|*[!0-9]*|0) die "NGPUS must be a positive number, got '$ngpus'" ;; esac
case "$port" in ''|*[!0-9]*) die "PORT must be a number, got '$port'" ;; esac

if [ -z "$split" ]; then
  case "$dataset" in
    pascal) split=1464 ;;
    cityscapes) split=1_16 ;;
    coco) split=1_512 ;;
    ade20k) split=1_64 ;;
    toy) split=toy ;;
    *) die "dataset '$dataset' has no default split: name one (a folder under splits/$dataset/)" ;;
  esac
fi

method_args=()
if [ -z "$config" ]; then
  method=${method:-allspark}
  if [ -f "configs/${dataset}_${method}.yaml" ]; then
    config=configs/${dataset}_${method}.yaml
  elif [ -f "configs/${dataset}_baseline_${method}.yaml" ]; then
    config=configs/${dataset}_baseline_${method}.yaml  # train.py's names semi / sup
  else
    known=$(cd configs && ls "${dataset}"_*.yaml 2>/dev/null | sed "s/^${dataset}_//; s/\.yaml$//" | tr '\n' ' ' | sed 's/ $//')
    die "no config configs/${dataset}_${method}.yaml; methods with a config for '$dataset': ${known:-none} (or give --config FILE)"
  fi
  name=$method
else
  [ -f "$config" ] || die "config not found: $config"
  if [ -n "$method" ]; then
    method_args=(--method "${method#baseline_}")  # train.py checks the name
  fi
  name=${method:-$(basename "$config" .yaml)}
fi

if [ "${split#*/}" != "$split" ] && [ -d "$split" ]; then  # a path: the lists are in that folder
  labeled_id_path=$split/labeled.txt
  unlabeled_id_path=$split/unlabeled.txt
  split=$(basename "$split")
elif [ "$dataset" = toy ] && [ ! -f "splits/toy/$split/labeled.txt" ]; then
  labeled_id_path=splits/toy/labeled.txt
  unlabeled_id_path=splits/toy/unlabeled.txt
else
  labeled_id_path=splits/$dataset/$split/labeled.txt
  unlabeled_id_path=splits/$dataset/$split/unlabeled.txt
fi
if [ ! -f "$labeled_id_path" ]; then
  known=$(ls -d splits/"$dataset"/*/ 2>/dev/null | xargs -n1 basename 2>/dev/null | tr '\n' ' ' | sed 's/ $//')
  die "split list not found: $labeled_id_path; splits of '$dataset': ${known:-none} (see splits/README.md)"
fi
if [ ! -f "$unlabeled_id_path" ] && [ "$dataset" = coco ]; then
  echo "$(basename "$0"): $unlabeled_id_path is made from the COCO images: python -m allspark.tools.splits complete" \
       "--labeled $labeled_id_path --root data/coco --image-dir train2017 --mask-dir masks --out $unlabeled_id_path" >&2
fi

save_path=${save_path:-exp/$dataset/$name/$split}
seed_list=("")  # one run in the save path itself
if [ -n "$seeds" ]; then
  case "$seeds" in *[!0-9,]*|,*|*,|*,,*) die "--seeds must be a comma-separated list of numbers, e.g. 0,1,2; got '$seeds'" ;; esac
  IFS=, read -r -a seed_list <<< "$seeds"
fi

set_run() {  # set_run [SEED]: run_path, log and train_args of one run (with a seed: its seed<k> subfolder)
  run_path=$save_path
  local seed_args=()
  if [ -n "${1:-}" ]; then
    run_path=$save_path/seed$1
    seed_args=(--seed "$1")
  fi
  log=$run_path/$(date +"%Y%m%d_%H%M%S").log
  train_args=(train.py --config="$config" "${method_args[@]}" --labeled-id-path "$labeled_id_path"
              --unlabeled-id-path "$unlabeled_id_path" --save-path "$run_path" --port "$port" "${seed_args[@]}")
  if [ -n "$time_limit" ]; then
    train_args+=(--time-limit "$time_limit")
  fi
  if [ ${#overrides[@]} -gt 0 ]; then
    train_args+=(--opts "${overrides[@]}")
  fi
}

run_logged() {  # run "$@" with its output tee'd to $log; sets $status to its exit status (not tee's)
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "$@"
    echo
    status=0
    return
  fi
  mkdir -p "$run_path"
  set +e
  "$@" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
  set -e
  case "$status" in
    0) ;;
    3) echo "$(basename "$0"): training stopped with a checkpoint (exit status 3): run the same command again to" \
            "continue (log: $log)" >&2 ;;
    *) echo "$(basename "$0"): training failed with exit status $status (log: $log)" >&2 ;;
  esac
}
