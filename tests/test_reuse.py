"""Reusing a trained run from its folder: evaluate, visualize, embed (and search), bad input.

One tiny digits run (module-scoped) serves every test; the tools are called in-process
through their ``main`` (as the CLIs do, via ``rundir.run_cli``) except where a subprocess
checks that an error leaves no traceback.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, TINY
from tripletlab import embed, evaluate, rundir, visualize
from tripletlab.errors import ConfigError, DataError

# Class folders of the gallery; its images are digits test images, so the run's own test
# split contains them.
GALLERY_CLASSES = ["0", "1", "2", "3"]
PER_CLASS = 5


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One real run through run.py, as a user starts it (1 epoch on digits)."""
    out = tmp_path_factory.mktemp("run")
    proc = subprocess.run(
        [sys.executable, "run.py", *TINY, f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def digits(run_dir):
    """The run's data, as training loaded it."""
    from tripletlab.data import load_dataset

    return load_dataset(rundir.load_config(run_dir).cfg.dataset)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, digits):
    """PNGs of digits in class sub-folders, in other sizes and channels than the model's
    (16x16, RGB for half of them), so embedding has to convert them."""
    root = tmp_path_factory.mktemp("gallery")
    for name in GALLERY_CLASSES:
        members = np.flatnonzero(digits.y_test == int(name))[:PER_CLASS]
        (root / name).mkdir()
        for j, i in enumerate(members):
            im = Image.fromarray(digits.x_test[i][..., 0]).resize((16, 16))
            (im.convert("RGB") if j % 2 else im).save(root / name / f"{i}.png")
    return root


def _cli(module, argv, capsys):
    """Run a tool's CLI in-process: its exit code, stdout and stderr."""
    code = rundir.run_cli(module.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- evaluate


def test_evaluate_reproduces_the_runs_final_metrics_exactly(run_dir, capsys):
    summary = json.loads((run_dir / "summary.json").read_text())
    before = {n: (run_dir / n).read_bytes() for n in ("metrics.csv", "summary.json")}
    code, out, _ = _cli(evaluate, [run_dir], capsys)
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
        evaluate,
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


def test_evaluate_on_another_dataset_through_a_group_override(run_dir, gallery):
    result = evaluate.evaluate_run(run_dir, ["dataset=image_folder", f"dataset.root={gallery}"])
    ds = result["config"]["dataset"]
    # conf/dataset/image_folder.yaml was composed, then sized for the model (8x8 grey).
    assert ds["name"] == "image_folder" and ds["root"] == str(gallery)
    assert (ds["image_size"], ds["channels"], ds["test_fraction"]) == (8, 1, 0.2)
    assert result["dataset"]["queries"] + result["dataset"]["knn_gallery"] == 20
    assert result["training_metrics"] is None  # other data: nothing to compare with
    assert set(result["metrics"]) >= {"precision_at_1", "map_at_r", "knn_accuracy"}
    path = run_dir / "eval" / "image_folder-test-dataset=image_folder,dataset.root=_"
    assert result["path"].startswith(str(path))


def test_load_config_applies_overrides_to_the_saved_config(run_dir):
    rc = rundir.load_config(run_dir, ["eval.knn_k=3", "model=lenet"])
    assert rc.cfg.eval.knn_k == 3 and rc.cfg.model.name == "lenet"
    assert rc.cfg.dataset.name == "digits" and rc.cfg.sampler.classes_per_batch == 4
    assert rc.changed_groups == {"model"} and not rc.dataset_changed
    with pytest.raises(ConfigError, match="trainer.epoch"):
        rundir.load_config(run_dir, ["trainer.epoch=3"])
    with pytest.raises(ConfigError, match="dataset/bogus"):
        rundir.load_config(run_dir, ["dataset=bogus"])


# --------------------------------------------------------------------------- visualize


def _projector_server(logdir):
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer

    from tests.test_projector import ProjectorServer

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return ProjectorServer(logdir, data_provider.MultiplexerDataProvider(multiplexer, str(logdir)))


def test_visualize_rebuilds_projector_and_plots(run_dir, digits, capsys):
    from tripletlab.projector import checkpoint_tensor_name

    projector = run_dir / "projector"
    trained = (projector / "vectors.tsv").read_bytes()
    for name in ("embeddings_pca.png", "loss.png"):
        (run_dir / "plots" / name).unlink()
    # The defaults rebuild what training wrote, bit for bit.
    code, out, _ = _cli(visualize, [run_dir], capsys)
    assert code == 0 and "100 of 359 points" in out
    assert (projector / "vectors.tsv").read_bytes() == trained
    assert (run_dir / "plots" / "embeddings_pca.png").stat().st_size > 0
    assert (run_dir / "plots" / "loss.png").stat().st_size > 0  # curves from metrics.csv

    # Every point of the training split, served by TensorBoard with the run folder as logdir.
    code, out, _ = _cli(visualize, [run_dir, "--split", "train", "--max-points", "0"], capsys)
    assert code == 0 and "1438 of 1438 points" in out
    server = _projector_server(run_dir)
    assert "projector" in server.json("/runs")
    (info,) = server.json("/info", run="projector")["embeddings"]
    assert [int(s) for s in info["tensorShape"]] == [1438, 8]
    assert info["sprite"]["singleImageDim"] == [8, 8]
    name = checkpoint_tensor_name("embedding")
    emb = np.frombuffer(server.get("/tensor", run="projector", name=name).get_data(), np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb.reshape(-1, 8), axis=1), 1.0, rtol=1e-5)
    rows = server.get("/metadata", run="projector", name=name).get_data(as_text=True)
    labels = [int(r.split("\t")[0]) for r in rows.splitlines()[1:]]
    assert labels == digits.y_train.tolist()  # the train split, in order


# --------------------------------------------------------------------------- embed


def test_embed_with_neighbours_in_a_gallery(run_dir, gallery, digits, tmp_path, capsys, caplog):
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
    code, text, err = _cli(
        embed, [run_dir, queries, "--out", out, "--neighbours", k, "--gallery", gallery], capsys
    )
    assert code == 0, err
    assert "skipping 1 file" in caplog.text

    emb = np.load(out)
    assert emb.shape == (3, 8) and emb.dtype == np.float32  # a_copy, c_test7, nested/b_same
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    rc = rundir.load_config(run_dir)
    embedder = rundir.open_model(run_dir, rc.cfg)
    # The same pixels as the dataset's; the embedding agrees up to float rounding (a batch of
    # another size may take another oneDNN code path, so bit equality needs equal batches).
    pixels = embed.read_images([queries / "c_test7.png"], embedder.input_shape)
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
    assert sheet.width > (k + 1) * embed.TILE and sheet.height >= 3 * embed.TILE


def test_embed_tsv_and_neighbours_in_the_training_split(run_dir, gallery, tmp_path):
    files = sorted((gallery / "1").glob("*.png"))[:2]
    result = embed.embed_inputs(run_dir, files, tmp_path / "e.tsv", neighbours=2)
    lines = (tmp_path / "e.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["path"] + [f"e{i}" for i in range(8)]
    assert [line.split("\t")[0] for line in lines[1:]] == [str(p) for p in files]
    values = np.array([line.split("\t")[1:] for line in lines[1:]], dtype=np.float64)
    np.testing.assert_allclose(values, result["embeddings"], rtol=1e-6)
    assert result["gallery_size"] == 1438 and "digits training split" in result["gallery"]
    assert all(row[2].startswith("train[") for row in result["table"])
    assert all(row[3] in [str(i) for i in range(10)] for row in result["table"])
    assert (tmp_path / "e.neighbours.tsv").is_file()
    assert (tmp_path / "e.neighbours.png").is_file()


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
        ("bad_override", "Key 'epoch' not in"),
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
        "not_a_run": (evaluate, [tmp_path / "empty"]),
        "missing_run": (visualize, [tmp_path / "nowhere"]),
        "no_model": (embed, [run_without_model, image, *out]),
        "unreadable_image": (embed, [run_dir, image, tmp_path / "corrupt.png", *out]),
        "empty_folder": (embed, [run_dir, tmp_path / "empty", *out]),
        "bad_out": (embed, [run_dir, image, "--out", tmp_path / "e.csv"]),
        "bad_override": (evaluate, [run_dir, "trainer.epoch=3"]),
    }[case]
    code, _, err = _cli(module, argv, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "e.npy").exists()


def test_cli_errors_have_no_traceback(run_without_model, tmp_path):
    (tmp_path / "not_a_run").mkdir()
    for module, args in [
        ("tripletlab.evaluate", [tmp_path / "not_a_run"]),
        ("tripletlab.visualize", [run_without_model]),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().startswith("error: ")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_errors_are_tripletlab_errors(run_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        embed.find_images([tmp_path / "nothing.png"])
    with pytest.raises(ConfigError, match="--gallery needs --neighbours"):
        embed.embed_inputs(run_dir, [tmp_path], tmp_path / "e.npy", gallery_dir=tmp_path)
