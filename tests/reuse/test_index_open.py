"""Opening a run's index when faiss is missing (tripletlab.reuse.index.open_index), without
a trained run: the manifest is all it reads before it needs faiss."""

from __future__ import annotations

import json
import logging
import sys

from tripletlab.reuse import index as idx
from tripletlab.run_folder import RunFolder


def test_an_index_without_faiss_is_not_used_and_the_log_says_how_to_install_it(
    tmp_path, monkeypatch, caplog
):
    """faiss not importable (the ``index`` extra not installed): no index, one warning
    naming the folder and the install command. Bug: the warning's arguments swapped or lost."""
    folder = RunFolder(tmp_path / "run")
    folder.index_dir.mkdir(parents=True)
    manifest = {"kind": "flat", "count": 3, "dim": 4, "build": "build-1"}
    (folder.index_dir / idx.MANIFEST_FILE).write_text(json.dumps(manifest))
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with caplog.at_level(logging.WARNING, logger="tripletlab"):
        assert idx.open_index(folder) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"not using {folder.index_dir}: tripletlab-index needs faiss, which is not "
        "installed: pip install 'tripletlab[index]' (or pip install faiss-cpu)"
    ]
