#!/usr/bin/env bash
# The fair-tuning protocol (experiment=reality_check; Musgrave, Belongie and Lim, "A Metric
# Learning Reality Check", ECCV 2020), into OUT (default outputs/reality_check):
#   1. tune: for each strategy x cross-batch memory (off, 1024), one Optuna study of TRIALS
#      trials (the same for all) on the validation classes (dataset.val_classes=2), over
#      trainer.learning_rate, mining.margin and the strategy's own keys (easy_positive:
#      mining.negatives; distance_weighted: mining.cutoff, mining.nonzero_loss_cutoff);
#      OUT/tune/<strategy>-<memory>/, studies in OUT/optuna.db;
#   2. final: each study's best config, retrained with SEEDS on all 5 training classes and
#      evaluated on the 5 unseen test classes: OUT/final/<strategy>-<memory>/;
#   3. one summary of the final runs: OUT/summary/summary.md (n, mean, std, Student-t 95%
#      interval, each configuration against the best: paired t-test, Holm-adjusted).
# Trials maximise RC_METRIC on the validation classes; the table is sorted by it.
# Resumable: rerun the same command. Finished trials and runs are kept; a killed trial or
# run is run again (runs resume from their checkpoints).
#   scripts/reality_check.sh [OUT]
# The budget, from the environment (the defaults are the protocol's):
#   RC_TRIALS=8  RC_SEEDS=1,2,3  RC_METRIC=precision_at_1  RC_MEMORY="0 1024"
#   RC_STRATEGIES="batch_all batch_hard semi_hard easy_positive distance_weighted"
#   RC_OVERRIDES="..."   extra overrides for every run (space-separated), e.g. a smaller data set
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
export PYTHON="$PY"  # sweep.sh's python too
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's tripletlab (a worktree's too)
OUT="${1:-outputs/reality_check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
TRIALS="${RC_TRIALS:-8}"
SEEDS="${RC_SEEDS:-1,2,3}"
METRIC="${RC_METRIC:-precision_at_1}"
read -r -a MEMORY <<< "${RC_MEMORY:-0 1024}"
read -r -a STRATEGIES <<< "${RC_STRATEGIES:-batch_all batch_hard semi_hard easy_positive distance_weighted}"
read -r -a EXTRA <<< "${RC_OVERRIDES:-}"
# Half the trials are random (TPE's start-up), the rest guided; the same seed for every study.
TUNE=(hparams_search=optuna "hydra.sweeper.n_trials=$TRIALS"
  "hydra.sweeper.sampler.n_startup_trials=$(((TRIALS + 1) / 2))"
  "hydra.sweeper.storage=sqlite:///$OUT/optuna.db"
  "trainer.learning_rate=tag(log,interval(0.0003,0.01))" "mining.margin=interval(0.05,0.8)"
  "sampler.images_per_class=21")  # fixed: out of hparams_search=optuna's default space

own_keys() {  # the strategy's own search space
  case "$1" in
    easy_positive) echo "mining.negatives=choice(semi_hard,hard)" ;;
    distance_weighted) echo "mining.cutoff=interval(0.25,0.75) mining.nonzero_loss_cutoff=interval(1.2,2.0)" ;;
  esac
}

best_overrides() {  # a finished study's best parameters as overrides, one a line (3 significant digits)
  # The file may have been edited or come from someone else: only job keys, and values that
  # are numbers, booleans or plain words, so that it cannot add overrides of its own (a
  # hydra.launcher.setup line runs in the sbatch script); anything else is one error line.
  "$PY" - "$1" <<'PY'
import re
import sys
import yaml
path = sys.argv[1]
def refuse(why):
    sys.exit(f"error: {path}: {why}; nothing of this cell was run: rerun its study (delete the file)")
try:
    best = yaml.safe_load(open(path, encoding="utf-8"))["best_params"]
except Exception as err:  # unreadable, not YAML, no best_params
    refuse(f"no best_params ({type(err).__name__}: {err})".replace("\n", " "))
if not isinstance(best, dict):
    refuse("best_params is not a mapping")
for key, value in sorted(best.items(), key=str):
    if not (isinstance(key, str) and re.fullmatch(r"[A-Za-z]\w*(\.[A-Za-z]\w*)*", key, re.ASCII)) or (
        key.split(".")[0] == "hydra"
    ):
        refuse(f"best_params has the key {key!r}, which is not a job key such as mining.margin")
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float)):
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
    elif isinstance(value, str) and re.fullmatch(r"[\w.+-]+", value, re.ASCII):
        text = value
    else:
        refuse(f"best_params.{key} is {value!r}: not a number, a boolean or a plain word")
    print(f"{key}={text}")
PY
}

status=0
for strategy in "${STRATEGIES[@]}"; do
  for memory in "${MEMORY[@]}"; do
    cell="$strategy-$memory"
    tune="$OUT/tune/$cell"
    run=(experiment=reality_check model=small_cnn "mining=$strategy" "mining.memory_size=$memory"
      "optimized_metric=$METRIC")  # tuned on the metric the table is sorted by
    if [[ "$(cat "$tune/.trials" 2>/dev/null)" != "$TRIALS" ]]; then
      echo "== tuning $cell: $TRIALS trials on the validation classes" >&2
      read -r -a own <<< "$(own_keys "$strategy")"
      # A failed trial makes the sweep exit 1; the study goes on and counts it.
      "$ROOT/sweep.sh" "${run[@]}" "${TUNE[@]}" "${own[@]}" "hydra.sweeper.study_name=$cell" \
        "${EXTRA[@]}" "hydra.sweep.dir=$tune" || true
      if [[ -f "$tune/optimization_results.yaml" ]]; then echo "$TRIALS" > "$tune/.trials"; fi
    fi
    if [[ ! -f "$tune/optimization_results.yaml" ]]; then
      echo "error: $cell has no tuned config ($tune/optimization_results.yaml): rerun to retry" >&2
      status=1
      continue
    fi
    if ! best_lines="$(best_overrides "$tune/optimization_results.yaml")"; then
      status=1
      continue
    fi
    best=()  # one override a line, never split on spaces
    if [[ -n "$best_lines" ]]; then mapfile -t best <<< "$best_lines"; fi
    echo "== final $cell: ${best[*]}, seeds $SEEDS, on the test classes" >&2
    "$ROOT/sweep.sh" "${run[@]}" "${best[@]}" dataset.val_classes=null "seed=$SEEDS" \
      "${EXTRA[@]}" "hydra.sweep.dir=$OUT/final/$cell" || status=1
  done
done
"$PY" -m tripletlab.summarize "$OUT/final" --out "$OUT/summary" --metric "$METRIC"
echo "summary: $OUT/summary/summary.md" >&2
exit "$status"
