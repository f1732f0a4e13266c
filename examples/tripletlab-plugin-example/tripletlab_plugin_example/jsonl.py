"""``logger=jsonl``: a tracker that appends one JSON line per epoch (the metrics row) and
one for the final summary to ``<run folder>/<logger.file>``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tripletlab.options import setting
from tripletlab.options.logger import LoggerConfig
from tripletlab.registry import Option


@dataclass
class JsonlConfig(LoggerConfig):
    name: str = "jsonl"
    file: str = setting("tracker.jsonl", "the file in the run folder")


class JsonLinesTracker:
    name = "jsonl"

    def __init__(self, path):
        self.path = path

    def _write(self, kind: str, data: Any) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"event": kind, **dict(data)}, default=str) + "\n")

    def on_epoch_end(self, row):
        self._write("epoch", row)

    def on_train_end(self, summary):
        self._write("end", {"status": summary.get("status"), "metrics": summary.get("metrics")})


def jsonl_tracker(logger_cfg: Any, folder: Any, config: Any) -> JsonLinesTracker:
    return JsonLinesTracker(folder.path / str(logger_cfg.file))


TRACKER = Option("jsonl", JsonlConfig, target=jsonl_tracker)
