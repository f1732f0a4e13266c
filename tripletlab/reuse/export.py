"""Export a run's embedding model for use without tripletlab: ``tripletlab-export``.

``export_run(RUN_DIR, format="saved_model" | "onnx", out=None)`` writes into ``out`` (by
default the run folder's ``export/``, :attr:`RunFolder.export_dir`):

- ``saved_model/``: a TensorFlow SavedModel that only TensorFlow loads
  (``tf.saved_model.load``: no tripletlab, no Keras custom objects; the graph holds plain TF
  ops and the weights). Two signatures:

  - ``serving_default``: ``images`` uint8 [N, H, W, C] of any size, C = 1, 2, 3 or 4 (grey,
    grey + alpha, RGB, RGBA) -> ``embeddings`` float32 [N, D];
  - ``serve_encoded``: ``encoded`` string [N] (JPEG, PNG, GIF or BMP file contents, each
    of its own size) -> ``embeddings`` float32 [N, D].

  Inside the graph, the run's own preprocessing, the very function training's data and
  ``tripletlab-embed`` use (:func:`tripletlab.data.preprocess.conform` and ``decode``): an
  alpha channel is dropped, colour -> grey with PIL's luma formula (or grey repeated into
  RGB), resized bilinearly with antialiasing and rounded to uint8 (no resizing at all when
  the image already has the model's size), then scaled to [0, 1].
  The backbone's own normalisation (pretrained models) and the L2 normalisation (when the
  run used it) are layers of the model, so they are in the graph too.
- ``embedding_model.onnx``: through tf2onnx (the ``onnx`` extra): ``images`` uint8
  [N, H, W, C] in the model's own shape (``export.json``'s ``image_shape``: ONNX has no
  operator for TensorFlow's antialiased resize, so resizing is the caller's) -> float32
  [N, D], scaling to [0, 1] inside. Checked with onnxruntime before it is written.
- ``export.json``: what was exported: the image shape the model sees, D, the signatures.

A run trained with mixed precision is exported in float32 (the model rebuilt under the
float32 policy with the same weights). Every file appears atomically: each export is
written to a temporary name next to its target, then renamed over it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tripletlab.errors import ConfigError, TripletLabError, one_line
from tripletlab.run_folder import RunFolder

log = logging.getLogger("tripletlab")

FORMATS = ("saved_model", "onnx")
SAVED_MODEL_DIR = "saved_model"
ONNX_FILE = "embedding_model.onnx"
MANIFEST_FILE = "export.json"
ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # the largest difference to TensorFlow's embeddings an export may have


class ExportError(TripletLabError):
    """The model cannot be exported in the asked format (or its extra is missing)."""


# --------------------------------------------------------------------------- the graph


def float32_model(model):
    """``model`` with every layer computing in float32, the same weights.

    A run trained under mixed precision saves layers with a ``mixed_*`` dtype policy; an
    export computes in float32 (what a serving runtime expects, and what the run's
    embeddings approximate). A float32 model is returned as is.
    """

    config = model.get_config()
    changed = _float32_policies(config)
    if not changed:
        return model
    clone = model.__class__.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def _float32_policies(node: Any) -> bool:
    """Set every ``mixed_*`` DTypePolicy in a Keras config to float32, in place."""
    changed = False
    if isinstance(node, dict):
        if node.get("class_name") == "DTypePolicy" and str(
            node.get("config", {}).get("name", "")
        ).startswith("mixed_"):
            node["config"]["name"] = "float32"
            return True
        for value in node.values():
            changed |= _float32_policies(value)
    elif isinstance(node, list):
        for value in node:
            changed |= _float32_policies(value)
    return changed


def decode_batch(encoded, height: int, width: int, channels: int):
    """TensorFlow: string [N] of image files' bytes -> uint8 [N, height, width, channels],
    each image decoded and conformed on its own (:func:`tripletlab.data.preprocess.decode`),
    so their sizes may differ."""
    import tensorflow as tf

    from tripletlab.data.preprocess import decode

    return tf.map_fn(
        lambda contents: decode(contents, height, width, channels),
        encoded,
        fn_output_signature=tf.TensorSpec([height, width, channels], tf.uint8),
    )


class ServingFunctions:
    """The exported functions around a float32 Keras model (TensorFlow ops only)."""

    def __init__(self, model):
        self.model = model
        self.height, self.width, self.channels = (int(s) for s in model.input_shape[1:])
        self.dim = int(model.output_shape[-1])

    def embed(self, images):
        """uint8 [N, H, W, C] in the model's shape -> float32 [N, D], as training's eval."""
        import tensorflow as tf

        scaled = tf.cast(images, tf.float32) * (1.0 / 255.0)  # pipeline.scale_images
        return tf.cast(self.model(scaled, training=False), tf.float32)

    def images(self, images):
        """uint8 [N, h, w, c], any size and 1..4 channels -> {"embeddings": float32 [N, D]}."""
        from tripletlab.data.preprocess import conform

        conformed = conform(images, self.height, self.width, self.channels)
        return {"embeddings": self.embed(conformed)}

    def encoded(self, encoded):
        """string [N] of JPEG/PNG/GIF/BMP bytes -> {"embeddings": float32 [N, D]}."""
        decoded = decode_batch(encoded, self.height, self.width, self.channels)
        return {"embeddings": self.embed(decoded)}

    @staticmethod
    def images_spec():
        import tensorflow as tf

        return [tf.TensorSpec([None, None, None, None], tf.uint8, name="images")]

    @staticmethod
    def encoded_spec():
        import tensorflow as tf

        return [tf.TensorSpec([None], tf.string, name="encoded")]


# --------------------------------------------------------------------------- writing


def _replace(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing what was there.

    A folder cannot be swapped in one step: the old one is renamed aside first and removed
    after, so ``target`` is always the complete old export or the complete new one (missing
    for an instant), never a partial one."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _temporary(out: Path, name: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # the usual permissions, not mkdtemp's private 0700
    return tmp


@contextlib.contextmanager
def _tf_path(path: Path) -> Iterator[str]:
    """``path`` as TensorFlow's file system takes it: as UTF-8. A folder's name may be any
    bytes (Linux): then the path goes through an open handle of its parent folder,
    ``/proc/self/fd/N/<name>`` (``path``'s own name is tripletlab's, ASCII)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def write_saved_model(functions: ServingFunctions, out: Path) -> Path:
    """The SavedModel with ``serving_default`` (images) and ``serve_encoded`` signatures."""
    from keras.export import ExportArchive

    archive = ExportArchive()
    archive.track(functions.model)
    archive.add_endpoint("serving_default", functions.images, functions.images_spec())
    archive.add_endpoint("serve_encoded", functions.encoded, functions.encoded_spec())
    tmp = _temporary(out, SAVED_MODEL_DIR)
    try:
        with _tf_path(tmp) as path:
            archive.write_out(path, verbose=False)
        target = out / SAVED_MODEL_DIR
        _replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def require_onnx_extra() -> None:
    """tf2onnx and onnxruntime import, or one ExportError saying how to install them."""
    missing = []
    for module in ("tf2onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(
            f"--format onnx needs {' and '.join(missing)}, which are not installed: "
            "pip install 'tripletlab[onnx]' (or pip install tf2onnx onnxruntime)"
        )


def _patch_tf2onnx_for_numpy2() -> None:
    # tf2onnx 1.17 still uses numpy aliases removed in numpy 2 in its constant folding; Keras
    # ships the patch it applies before its own ONNX export. Without it, conversion works
    # as long as the graph never takes those code paths.
    import warnings

    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:
        return
    with warnings.catch_warnings():  # its hasattr(np, "object") warns on numpy 2
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()


def write_onnx(functions: ServingFunctions, out: Path, check_images) -> tuple[Path, float]:
    """``serving_default`` as ONNX; returns its path and the largest difference between
    onnxruntime's and TensorFlow's embeddings of ``check_images`` (uint8 [N, H, W, C])."""
    import tensorflow as tf
    import tf2onnx

    _patch_tf2onnx_for_numpy2()
    # ONNX has no antialiased resize that tf2onnx maps TensorFlow's onto (ScaleAndTranslate):
    # the ONNX model takes images already in the model's shape and scales them itself.
    h, w, c = functions.height, functions.width, functions.channels
    spec = [tf.TensorSpec([None, h, w, c], tf.uint8, name="images")]
    function = tf.function(functions.embed)
    try:
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=spec, opset=ONNX_OPSET, output_path=None
        )
    except Exception as exc:  # tf2onnx raises plain ValueError/RuntimeError on unsupported ops
        raise ExportError(f"tf2onnx cannot convert this model: {one_line(exc)[:300]}") from None
    data = proto.SerializeToString()
    difference = onnx_difference(data, check_images, function(check_images).numpy())
    if not difference <= ONNX_TOLERANCE:
        raise ExportError(
            f"the ONNX model's embeddings differ from TensorFlow's by {difference:.3g} "
            f"(more than {ONNX_TOLERANCE:g}); nothing was written"
        )
    from tripletlab.io_utils import atomic_write_bytes

    return atomic_write_bytes(out / ONNX_FILE, data), difference


def onnx_difference(model_bytes: bytes, images, expected) -> float:
    """Largest |onnxruntime's embeddings of ``images`` - ``expected``| (float)."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = session.run(None, {name: np.asarray(images, np.uint8)})[0]
    return float(np.abs(got - expected).max())


# --------------------------------------------------------------------------- the command


def export_run(
    run_dir: str | os.PathLike,
    format: str = "saved_model",
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """Export the run's embedding model (see the module docstring); returns what was
    written: {"format", "path", "out", "image_shape", "embedding_size", ...}."""
    from tripletlab.io_utils import atomic_write_json

    folder = RunFolder.existing(run_dir)
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not valid; choose one of: {', '.join(FORMATS)}")
    if format == "onnx":
        require_onnx_extra()
    folder.require_model()  # before TensorFlow is imported
    out_dir = folder.export_dir if out is None else Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir}: cannot create the folder ({exc.strerror})") from None

    import keras

    from tripletlab.inference import load_model
    from tripletlab.reuse import run_config

    run_config.load_config(folder.path, overrides)  # a run whose config no longer loads fails
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = float32_model(load_model(folder))
        functions = ServingFunctions(model)
        result: dict[str, Any] = {
            "run_dir": str(folder.path),
            "format": format,
            "out": str(out_dir),
            "image_shape": [functions.height, functions.width, functions.channels],
            "embedding_size": functions.dim,
            "l2_normalized": any(layer.name == "l2_normalize" for layer in model.layers),
            "precision": "float32",
        }
        if format == "saved_model":
            path = write_saved_model(functions, out_dir)
            result["signatures"] = {
                "serving_default": "images uint8 [N, H, W, C] (any size, 1-4 channels) -> "
                f"embeddings float32 [N, {functions.dim}]",
                "serve_encoded": "encoded string [N] (JPEG/PNG/GIF/BMP bytes) -> "
                f"embeddings float32 [N, {functions.dim}]",
            }
        else:
            path, difference = write_onnx(functions, out_dir, _check_images(functions))
            result["onnx_max_abs_difference"] = difference
            h, w, c = result["image_shape"]
            result["signatures"] = {
                "images": f"uint8 [N, {h}, {w}, {c}] (the model's own size: resize first) -> "
                f"float32 [N, {functions.dim}]"
            }
    finally:
        keras.mixed_precision.set_global_policy(previous)
    result["path"] = str(path)
    manifest_path = out_dir / MANIFEST_FILE
    manifest = _read_json(manifest_path)
    manifest.update(
        {k: v for k, v in result.items() if k not in ("path", "format", "signatures", "out")}
    )
    manifest.setdefault("exports", {})[format] = {
        "path": Path(path).name,
        "signatures": result["signatures"],
    }
    atomic_write_json(manifest_path, manifest)
    log.info("exported %s to %s", format, path)
    return result


def _read_json(path: Path) -> dict:
    import json

    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _check_images(functions: ServingFunctions):
    """Four fixed pseudo-random uint8 images [4, H, W, C] in the model's shape: a
    conversion is checked on them before it is written."""
    import numpy as np

    rng = np.random.default_rng(0)
    h, w, c = functions.height, functions.width, functions.channels
    return rng.integers(0, 256, (4, h, w, c), dtype=np.uint8)
