#!/usr/bin/env bash
# Build -> train -> evaluate SSMTL on UCSD Ped2; resumable (rerun skips what is done).
#   scripts/reproduce_ped2.sh DATA_ROOT WORKDIR [CONFIG [--config.key=value ...]]
# e.g. scripts/reproduce_ped2.sh ../shared/data/ped2 /tmp/ped2_cpu configs/ped2_cpu.py
# Extra --config.* overrides go to every stage (build, train, evaluate).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DATA_ROOT WORKDIR [CONFIG (default configs/ped2_cpu.py) [--config.key=value ...]]" >&2
  exit 2
fi
root=$(cd "$1" && pwd)
mkdir -p "$2"
workdir=$(cd "$2" && pwd)
config=${3:-configs/ped2_cpu.py}
shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/.."
common=(--config "$config" --config.data.root="$root" --config.data.records="$workdir/records" "$@")
stamp() { date +%s; }

t0=$(stamp)
python -m data_prep.build "${common[@]}"
t1=$(stamp)
python -m ssmtl_jax.main "${common[@]}" --workdir "$workdir" --config.eval.after_training=False
t2=$(stamp)
python -m ssmtl_jax.evaluate "${common[@]}" --workdir "$workdir"
t3=$(stamp)
python -m data_prep.recall --records "$workdir/records" --root "$root" > "$workdir/eval/detector_recall.json"
echo "wall time: build $((t1 - t0)) s, train $((t2 - t1)) s, evaluate $((t3 - t2)) s" | tee -a "$workdir/eval/wall_time.txt"
cat "$workdir/eval/detector_recall.json"
