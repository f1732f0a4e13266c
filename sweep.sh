#!/usr/bin/env bash
# The grid of models x mining strategies, then the comparison table.
#
#   ./sweep.sh [overrides...]             model=lenet,small_cnn x mining=batch_all,batch_hard,semi_hard
#   ./sweep.sh dataset=digits trainer.epochs=2 seed=1,2,3
#   ./sweep.sh model=lenet                 a model= or mining= override replaces that axis
#   ./sweep.sh hydra/launcher=joblib hydra.launcher.n_jobs=2    parallel jobs on this machine
#   ./sweep.sh --resume DIR [overrides...] rerun DIR's sweep into DIR: finished jobs are
#                                          skipped, unfinished ones resume from checkpoints
#   ./sweep.sh --dry-run ...               print the command instead of running it
#
# It runs `python run.py -m ...` with the venv's python when there is one. The sweep folder
# (outputs/multirun/<date>/<time>/, or hydra.sweep.dir=...) ends with summary.csv, summary.md
# and summary.png; the exit status is 1 when a job failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="python3"
fi

dry_run=0
resume=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run | -n) dry_run=1; shift ;;
    --resume)
      [[ $# -ge 2 ]] || { echo "sweep.sh: --resume needs a sweep folder" >&2; exit 2; }
      resume="$2"; shift 2 ;;
    --resume=*) resume="${1#--resume=}"; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) break ;;
  esac
done

args=()
if [[ -n "$resume" ]]; then
  [[ -d "$resume" ]] || { echo "sweep.sh: $resume is not a folder" >&2; exit 2; }
  resume="$(cd "$resume" && pwd)"
  # The sweep's original overrides, NUL-separated (they may hold spaces or quotes).
  list="$(mktemp)"
  if ! (cd "$ROOT" && "$PY" -m tripletlab.sweep resume-args "$resume") >"$list"; then
    rm -f "$list"
    exit 2
  fi
  saved=()
  mapfile -d '' saved <"$list"
  rm -f "$list"
  args=(${saved[@]+"${saved[@]}"} "hydra.sweep.dir=$resume")
else
  has_model=0
  has_mining=0
  for a in "$@"; do
    case "$a" in
      model=* | +model=* | ++model=*) has_model=1 ;;
      mining=* | +mining=* | ++mining=*) has_mining=1 ;;
    esac
  done
  [[ $has_model == 1 ]] || args+=("model=lenet,small_cnn")
  [[ $has_mining == 1 ]] || args+=("mining=batch_all,batch_hard,semi_hard")
fi

cmd=("$PY" "$ROOT/run.py" -m ${args[@]+"${args[@]}"} "$@")
if [[ $dry_run == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
