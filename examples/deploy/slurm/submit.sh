#!/bin/bash
# Usage: SHARDS=16 submit.sh INPUT RUN_DIR
# Submits SHARDS array tasks, then the merge once every task succeeded.
set -euo pipefail

input=$(realpath "$1")
run_dir=$(realpath -m "$2")
shards=${SHARDS:-8}
here=$(dirname "$(realpath "$0")")

array=$(sbatch --parsable --array="0-$((shards - 1))" "$here/shard.sbatch" "$input" "$run_dir")
merge=$(sbatch --parsable --dependency="afterok:$array" "$here/merge.sbatch" "$run_dir")
echo "shards: job $array ($shards tasks); merge: job $merge -> $run_dir/out.jsonl"
