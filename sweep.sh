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
# It is `tripletlab-sweep` (tripletlab/cli/sweep.py) running `python run.py -m ...` with the
# venv's python when there is one. The sweep folder (outputs/multirun/<date>/<time>/, or
# hydra.sweep.dir=...) ends with summary.csv, summary.md and summary.png; the exit status is
# 1 when a job did not finish (failed, interrupted, still running).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY="python3"
fi
case "${1:-}" in
  -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
esac

# Before set-up (no .venv, and a python without tripletlab's dependencies): one line, not an
# ImportError. find_spec only looks the packages up (importing TensorFlow takes seconds).
if ! missing="$("$PY" -c 'import importlib.util as u
print(" ".join(m for m in ("hydra", "omegaconf", "tensorflow") if u.find_spec(m) is None))' 2>/dev/null)"; then
  echo "error: $PY does not run: run \`make setup\` first (it creates .venv)" >&2
  exit 1
elif [[ -n "$missing" ]]; then
  echo "error: $PY cannot import $missing: run \`make setup\` first (it creates .venv)" >&2
  exit 1
fi

# The clone's tripletlab, as `python run.py` finds it, installed or not.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m tripletlab.cli.sweep --train-script "$ROOT/run.py" "$@"
