#!/usr/bin/env bash
# Build -> train -> choose eval settings on validation data -> evaluate SSMTL
# on UCSD Ped2; resumable (rerun skips what is done).
#   scripts/reproduce_ped2.sh DATA_ROOT WORKDIR [CONFIG [--config.key=value ...]]
# e.g. scripts/reproduce_ped2.sh ../shared/data/ped2 /tmp/ped2_cpu configs/ped2_cpu.py
# Extra --config.* overrides go to every stage (build, train, validate, evaluate).
#
# No setting is chosen on the test labels (README "Results"):
# 1. data_prep.validation makes WORKDIR/data: the training videos except the
#    held-out ones ($SSMTL_HOLDOUT, default 08,16), a 'val' split of
#    pseudo-anomalies made from the held-out videos (labels known by
#    construction) and the test split (linked, untouched);
# 2. the model trains on the remaining training videos;
# 3. ssmtl_jax.validate picks the eval settings with the best micro AUC on
#    'val' (WORKDIR/eval_val/selection.json);
# 4. ssmtl_jax.evaluate scores the test split once, with those settings;
# 5. data_prep.recall measures what the boxes catch: test anomalies
#    (eval/detector_recall.json) and the validation split's pasted objects
#    (eval/val_recall.json).
# Build settings (detector threshold, proposals) are chosen on 'val' too, by
# scripts/validate_build.py after a run (README "Past the detector's ceiling").
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
holdout=${SSMTL_HOLDOUT:-08,16}
data="$workdir/data"
records="$workdir/records"  # or the last --config.data.records= override
for a in "$@"; do case "$a" in --config.data.records=*) records=${a#*=} ;; esac; done
common=(--config "$config" --config.data.root="$data"
        --config.data.records="$records" --config.data.val_split=val "$@")
stamp() { date +%s; }

t0=$(stamp)
python -m data_prep.validation --root "$root" --out "$data" --holdout "$holdout"
python -m data_prep.build "${common[@]}"
t1=$(stamp)
python -m ssmtl_jax.main "${common[@]}" --workdir "$workdir" --config.eval.after_training=False
t2=$(stamp)
python -m ssmtl_jax.validate "${common[@]}" --workdir "$workdir" | tee "$workdir/validate.txt"
read -r -a chosen < <(tail -n 1 "$workdir/validate.txt")
t3=$(stamp)
python -m ssmtl_jax.evaluate "${common[@]}" "${chosen[@]}" --workdir "$workdir"
t4=$(stamp)
python -m data_prep.recall --records "$records" --root "$data" > "$workdir/eval/detector_recall.json"
# What the boxes catch of the validation split's pasted foreign objects (the
# videos with masks; data_prep.validation's 'paste' kind).
if grep -q '"paste"' "$data/validation.json"; then
  python -m data_prep.recall --records "$records" --root "$data" --split val \
    --skip_unmasked > "$workdir/eval/val_recall.json"
fi
echo "wall time: build $((t1 - t0)) s, train $((t2 - t1)) s, validate $((t3 - t2)) s, evaluate $((t4 - t3)) s" | tee -a "$workdir/eval/wall_time.txt"
echo "eval settings chosen on the validation split: ${chosen[*]}" | tee -a "$workdir/eval/wall_time.txt"
python - "$workdir/eval/detector_recall.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print({k: v for k, v in r.items() if k != "per_video"})
EOF
