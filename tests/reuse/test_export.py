"""tripletlab-export: a SavedModel that TensorFlow loads alone, and an ONNX model, both giving
the run's own embeddings.

The exports are loaded in fresh processes that import only TensorFlow (or only onnxruntime)
and the run's embeddings come from tripletlab.inference's Embedder, the path training
evaluated with.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import tripletlab
from tests.helpers import ROOT, TINY, tiny
from tripletlab.cli.export import main as export_main

pytestmark = pytest.mark.e2e

# Loads the SavedModel with TensorFlow only and embeds every array of the input .npz through
# serving_default, and the "png" entry (encoded files) through serve_encoded.
TF_ONLY = """
import sys
import numpy as np
import tensorflow as tf

export, inputs, outputs = sys.argv[1:4]
loaded = tf.saved_model.load(export)
arrays = dict(np.load(inputs, allow_pickle=False))
out = {}
for name, images in arrays.items():
    if name == "png":
        result = loaded.signatures["serve_encoded"](encoded=tf.constant(list(images)))
    else:
        result = loaded.signatures["serving_default"](images=tf.constant(images))
    assert result["embeddings"].dtype == tf.float32
    out[name] = result["embeddings"].numpy()
assert "tripletlab" not in sys.modules, "tripletlab was imported"
np.savez(outputs, **out)
"""

ORT_ONLY = """
import sys
import numpy as np
import onnxruntime

model, inputs, outputs = sys.argv[1:4]
session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
images = np.load(inputs)
np.save(outputs, session.run(None, {session.get_inputs()[0].name: images})[0])
assert "tensorflow" not in sys.modules and "tripletlab" not in sys.modules
"""


def _fresh_python(script: str, *args) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _run_embeddings(run_dir: Path, images: np.ndarray, float32: bool = False) -> np.ndarray:
    """The run's own embeddings (Embedder, batches of eval.batch_size)."""
    import keras

    from tripletlab.inference import Embedder, load_model
    from tripletlab.reuse.export import float32_model
    from tripletlab.run_folder import RunFolder

    model = load_model(RunFolder(run_dir))
    if float32:
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy("float32")
        try:
            model = float32_model(model)
        finally:
            keras.mixed_precision.set_global_policy(previous)
    return Embedder(model, batch_size=64).embed(images)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = tripletlab.compose([*TINY, "trainer.mixed_precision=off"])
    tripletlab.train(cfg, run_dir)
    from tripletlab.data import load_dataset

    return run_dir, load_dataset(cfg.dataset).x_test[:40]


def test_saved_model_gives_the_runs_embeddings_with_tensorflow_alone(run, tmp_path, capsys):
    run_dir, images = run
    assert export_main([str(run_dir)]) == 0
    assert "serving_default" in capsys.readouterr().out
    export = run_dir / "export" / "saved_model"
    manifest = json.loads((run_dir / "export" / "export.json").read_text())
    assert manifest["image_shape"] == [8, 8, 1] and manifest["embedding_size"] == 8

    rgb = np.repeat(images, 3, axis=-1)  # grey as colour: PIL's luma gives the grey back
    rgba = np.concatenate([rgb, np.full_like(images, 255)], axis=-1)
    encoded = np.array([_png(img) for img in images], dtype=object).astype(bytes)
    np.savez(tmp_path / "in.npz", grey=images, rgb=rgb, rgba=rgba, png=encoded)
    _fresh_python(TF_ONLY, export, tmp_path / "in.npz", tmp_path / "out.npz")
    got = np.load(tmp_path / "out.npz")

    expected = _run_embeddings(run_dir, images)
    np.testing.assert_allclose(got["grey"], expected, rtol=0, atol=1e-5)
    for name in ("rgb", "rgba", "png"):
        np.testing.assert_allclose(got[name], expected, rtol=0, atol=1e-5, err_msg=name)
    # The run normalises its embeddings; so does the export.
    np.testing.assert_allclose(np.linalg.norm(got["grey"], axis=1), 1.0, atol=1e-5)


def test_embed_and_the_saved_model_agree_on_images_of_another_size(run, tmp_path):
    # One preprocessing function (tripletlab.data.preprocess) in tripletlab-embed and in the
    # exported graph: the same files give the same embeddings, resized up or down, in any
    # mode. (With PIL's resize in tripletlab-embed, 24x24 PNGs differed by up to 1.3e-3.)
    from tripletlab.reuse.embed import embed_inputs

    run_dir, _ = run
    rng = np.random.default_rng(5)
    files, arrays = [], []
    for i, (mode, size) in enumerate(
        [("RGB", 24), ("L", 24), ("RGBA", 24), ("P", 24), ("LA", 5), ("RGB", 31)]
    ):
        noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        smooth = Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2))
        image = smooth.quantize(colors=12) if mode == "P" else smooth.convert(mode)
        files.append(tmp_path / f"{i}_{mode}_{size}.png")
        image.save(files[-1])
        arrays.append(np.asarray(Image.open(files[-1]).convert("RGBA")))  # 4 channels
    embedded = embed_inputs(run_dir, files, tmp_path / "e.npy")["embeddings"]
    assert export_main([str(run_dir), "--out", str(tmp_path / "export")]) == 0
    encoded = np.array([f.read_bytes() for f in files], dtype=object).astype(bytes)
    np.savez(tmp_path / "in.npz", png=encoded, rgba24=np.stack(arrays[:4]))
    _fresh_python(
        TF_ONLY, tmp_path / "export" / "saved_model", tmp_path / "in.npz", tmp_path / "o.npz"
    )
    got = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(got["png"], embedded, rtol=0, atol=1e-5)
    # Decoded arrays of 4 channels (the alpha dropped, RGB -> grey in the graph): the first
    # four files, whose palette and grey RGBA copies hold the same pixels as the files.
    np.testing.assert_allclose(got["rgba24"], embedded[:4], rtol=0, atol=1e-5)


def test_onnx_gives_the_runs_embeddings_with_onnxruntime_alone(run, tmp_path, capsys):
    run_dir, images = run
    out = tmp_path / "export"
    assert export_main([str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert "checked with onnxruntime" in capsys.readouterr().out
    np.save(tmp_path / "in.npy", images)
    _fresh_python(ORT_ONLY, out / "embedding_model.onnx", tmp_path / "in.npy", tmp_path / "o.npy")
    difference = np.abs(np.load(tmp_path / "o.npy") - _run_embeddings(run_dir, images)).max()
    assert difference <= 1e-4


def test_a_new_export_replaces_the_old_one(run, tmp_path):
    run_dir, _ = run
    out = tmp_path / "again"
    (out / "saved_model").mkdir(parents=True)
    (out / "saved_model" / "stale.txt").write_text("from an older export")
    assert export_main([str(run_dir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "saved_model"]
    assert not (out / "saved_model" / "stale.txt").exists()
    assert (out / "saved_model" / "saved_model.pb").is_file()


def test_each_failure_is_one_line(run, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    bare = tmp_path / "no_model"
    shutil.copytree(run_dir / ".hydra", bare / ".hydra")
    cases = [
        ([str(bare)], "has no saved model"),
        ([str(run_dir), "--format", "tflite"], "--format 'tflite' is not valid"),
        ([str(tmp_path / "missing")], "does not exist"),
    ]
    for argv, message in cases:
        assert export_main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if the extra were not installed
    assert export_main([str(run_dir), "--format", "onnx", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "pip install 'tripletlab[onnx]'" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def _train(run_dir: Path, overrides: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "run.py", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


SHORT = ["trainer.steps_per_epoch=2"]
PRETRAINED = [*SHORT, "model.weights=none", "dataset.image_size=32"]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            [*tiny("vgg_gap"), *SHORT, "trainer.mixed_precision=bfloat16"], id="vgg_gap-bf16"
        ),
        pytest.param(
            [*tiny("lenet"), *SHORT, "distribute=mirrored", "distribute.cpu_devices=2"],
            id="lenet-mirrored",
        ),
        pytest.param(
            [*tiny("mobilenetv3_small"), *PRETRAINED],
            id="mobilenetv3_small",
            marks=pytest.mark.slow,  # 36 s
        ),
        pytest.param(
            [*tiny("efficientnetv2_b0"), *PRETRAINED],
            id="efficientnetv2_b0",
            marks=pytest.mark.slow,
        ),
        pytest.param([*tiny("resnet50"), *PRETRAINED], id="resnet50", marks=pytest.mark.slow),
    ],
)
def test_every_backbone_exports_in_float32(overrides, tmp_path):
    import tensorflow as tf

    from tripletlab.data import load_dataset
    from tripletlab.reuse.run_config import load_config

    run_dir = tmp_path / "run"
    _train(run_dir, overrides)
    assert export_main([str(run_dir)]) == 0
    cfg = load_config(run_dir).cfg
    images = load_dataset(cfg.dataset).x_test[:16]
    loaded = tf.saved_model.load(str(run_dir / "export" / "saved_model"))
    got = loaded.signatures["serving_default"](images=tf.constant(images))["embeddings"]
    assert got.dtype == tf.float32
    # A mixed precision run is exported in float32: its float32 twin's embeddings.
    np.testing.assert_allclose(
        got.numpy(), _run_embeddings(run_dir, images, float32=True), rtol=0, atol=1e-5
    )
    if "trainer.mixed_precision=bfloat16" in overrides:
        bf16 = _run_embeddings(run_dir, images)  # the run's own, computed in bfloat16
        assert 0 < np.abs(got.numpy() - bf16).max() < 0.1
