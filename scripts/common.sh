# Sourced by train.sh and slurm_train.sh (from the project root): the launch arguments and paths.
#   NGPUS PORT [dataset=pascal] [method=allspark] [split=1464]
if [ $# -lt 2 ]; then
  echo "usage: $0 NGPUS PORT [dataset=pascal] [method=allspark] [split=1464]" >&2
  exit 2
fi
now=$(date +"%Y%m%d_%H%M%S")
ngpus=$1
port=$2
dataset=${3:-pascal}
method=${4:-allspark}
split=${5:-1464}

config=configs/${dataset}_${method}.yaml
labeled_id_path=splits/$dataset/$split/labeled.txt
unlabeled_id_path=splits/$dataset/$split/unlabeled.txt
if [ "$dataset" = toy ]; then
  labeled_id_path=splits/toy/labeled.txt
  unlabeled_id_path=splits/toy/unlabeled.txt
fi
save_path=exp/$dataset/$method/$split
mkdir -p "$save_path"
