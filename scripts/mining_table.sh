#!/usr/bin/env bash
# The README's mining table (experiment=mining_table), in two stages, into OUT (default
# outputs/mining_table):
#   1. every strategy x memory off/on, seed 42;
#   2. seeds 1 and 2 for the two best cells by precision@1, and for batch-hard without memory.
# Then one summary over both stages (mean ± std where a cell has 3 seeds).
#   scripts/mining_table.sh [OUT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-outputs/mining_table}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
"$ROOT/sweep.sh" experiment=mining_table model=small_cnn \
  mining=batch_all,batch_hard,semi_hard,easy_positive,distance_weighted \
  mining.memory_size=0,1024 seed=42 "hydra.sweep.dir=$OUT/seed42" || true
# The two best cells, and batch-hard without memory, as "mining memory_size" lines.
cells=$("$PY" - "$OUT/seed42/summary.csv" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
rows = pd.read_csv(sys.argv[1])
rows = rows[rows["status"] == "ok"].sort_values("precision_at_1", ascending=False)
def memory(run_dir):  # run_dir is relative to the sweep folder
    summary = Path(sys.argv[1]).parent / run_dir / "summary.json"
    return json.loads(summary.read_text())["config"]["mining"]["memory_size"]
cells = [(r["mining"], int(memory(r["run_dir"]))) for _, r in rows.head(2).iterrows()]
cells = list(dict.fromkeys(cells + [("batch_hard", 0)]))
print("\n".join(f"{m} {s}" for m, s in cells))
PY
)
while read -r mining memory; do
  "$ROOT/sweep.sh" experiment=mining_table model=small_cnn "mining=$mining" \
    "mining.memory_size=$memory" seed=1,2 "hydra.sweep.dir=$OUT/$mining-$memory" || true
done <<< "$cells"
"$PY" -m tripletlab.summarize "$OUT" --out "$OUT/summary"
