"""One preprocessing path: the same files give the same uint8 pixels through every path that
reads images (in-memory and streamed data, the training pipeline, evaluation,
tripletlab-embed, tripletlab-index, the exported SavedModel), and nothing else resizes."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT

# (width, height) of the generated files: smaller and larger than the targets, not square.
SIZES = [(5, 7), (8, 8), (24, 24), (31, 17)]
# (file suffix, PIL mode): grey, grey + alpha, RGB, RGBA, palette, 1-bit; JPEG, GIF, BMP.
KINDS = [
    (".png", "L"),
    (".png", "LA"),
    (".png", "RGB"),
    (".png", "RGBA"),
    (".png", "P"),
    (".png", "1"),
    (".jpg", "RGB"),
    (".jpg", "L"),
    (".gif", "P"),
    (".bmp", "RGB"),
]
TARGETS = [(8, 8, 1), (16, 16, 3), (12, 10, 3)]  # down and up; grey and RGB; not square


def _image(mode: str, size: tuple[int, int], rng) -> Image.Image:
    """A smooth colour field plus noise (so that resizing and luma both matter), in ``mode``."""
    w, h = size
    grid = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), np.int16)
    noisy = np.clip(field + rng.integers(-30, 31, field.shape), 0, 255).astype(np.uint8)
    rgb = Image.fromarray(noisy)
    if mode == "P":
        return rgb.quantize(colors=17)
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        base = rgb.convert(mode[:-1])
        base.putalpha(alpha)
        return base
    return rgb.convert(mode)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """One file per kind and size, in a folder of class sub-folders (a gallery)."""
    root = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    paths = []
    for k, (suffix, mode) in enumerate(KINDS):
        for size in SIZES:
            path = root / f"class_{k % 2}" / f"{mode}_{size[0]}x{size[1]}{suffix}"
            path.parent.mkdir(exist_ok=True)
            _image(mode, size, rng).save(path)
            paths.append(path)
    return sorted(paths)  # a folder's order


def _identity_export(tmp_path: Path, shape) -> object:
    """The SavedModel that tripletlab-export writes around a model that returns its input
    (times 255): its outputs are the graph's preprocessed pixels."""
    import keras
    import tensorflow as tf

    from tripletlab.reuse.export import ServingFunctions, write_saved_model

    model = keras.Sequential([keras.Input(shape), keras.layers.Rescaling(255.0)])
    write_saved_model(ServingFunctions(model), tmp_path)
    return tf.saved_model.load(str(tmp_path / "saved_model"))


def _pixels(x) -> np.ndarray:
    """float pixel values (0..255, or 0..1 scaled) -> uint8, exactly."""
    x = np.asarray(x, np.float64)
    return np.round(x * (255.0 if x.max() <= 1.0 else 1.0)).astype(np.uint8)


@pytest.mark.parametrize("shape", TARGETS, ids=lambda s: "x".join(map(str, s)))
def test_every_path_gives_the_same_pixels(files, tmp_path, shape):
    import tensorflow as tf

    from tripletlab.data import conform_images, decode_image, images_from_files
    from tripletlab.data.image_files import ImageFiles
    from tripletlab.data.pipeline import TrainPipeline, eval_batches
    from tripletlab.data.preprocess import decode_native
    from tripletlab.reuse.embed import read_images
    from tripletlab.reuse.index import folder_source

    h, w, c = shape
    paths: dict[str, np.ndarray] = {}
    # tripletlab-embed's input, and the in-memory decoder it shares with the datasets.
    paths["embed"] = read_images(files, shape)
    paths["decode_image"] = np.stack([decode_image(p, c, (h, w)) for p in files])
    # An array of another shape given to the Embedder (and a run's data in another shape).
    native = [decode_native(p.read_bytes()).numpy() for p in files]
    paths["conform_images"] = np.concatenate([conform_images(x[None], shape) for x in native])
    # tripletlab-index's gallery of a folder, streamed and batched as evaluation does.
    gallery = folder_source(files[0].parents[1], shape).images
    assert list(gallery.paths) == [str(p) for p in files]
    paths["index"] = np.concatenate(list(eval_batches(gallery, 7)))
    paths["streamed"] = ImageFiles(files, h, w, c).read(batch_size=5)
    if h == w:  # dataset.image_size is square
        (memory,) = images_from_files([files], c, h, stream="false")
        (streamed,) = images_from_files([files], c, h, stream="true")
        paths["dataset_in_memory"] = memory
        paths["dataset_streamed"] = np.concatenate(list(eval_batches(streamed, 64)))
        # The streamed training pipeline: one epoch of batches, unaugmented, back to uint8.
        labels = np.arange(len(files)) % 2
        pipeline = TrainPipeline(streamed, labels, SimpleNamespace(name="random"), 8, seed=1)
        order = pipeline.batch_indices(0).reshape(-1)
        batches = np.concatenate([x.numpy() for x, _ in pipeline.epoch(0)])
        train = np.zeros_like(memory)
        train[order] = _pixels(batches)
        seen = np.zeros(len(files), bool)
        seen[order] = True
        paths["train_pipeline"] = np.where(seen[:, None, None, None], train, memory)
    # The exported SavedModel's graph: file bytes (serve_encoded) and decoded arrays of any
    # size and 1-4 channels (serving_default).
    export = _identity_export(tmp_path, shape)
    encoded = tf.constant([p.read_bytes() for p in files])
    got = export.signatures["serve_encoded"](encoded=encoded)["embeddings"]
    paths["export_encoded"] = _pixels(got)
    paths["export_images"] = np.concatenate(
        [
            _pixels(export.signatures["serving_default"](images=x[None])["embeddings"])
            for x in native
        ]
    )

    reference = paths.pop("embed")
    assert reference.shape == (len(files), *shape) and reference.dtype == np.uint8
    for name, pixels in paths.items():
        assert pixels.dtype == np.uint8, name
        np.testing.assert_array_equal(pixels, reference, err_msg=name)


def test_the_conversions_are_the_documented_ones():
    """Alpha dropped, PIL's luma, antialiased bilinear (PIL's bilinear filter, to rounding),
    grey repeated into RGB, the image untouched at its own size."""
    from tripletlab.data.preprocess import conform_image

    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    luma = np.asarray(Image.fromarray(rgba[..., :3]).convert("L"))
    np.testing.assert_array_equal(conform_image(rgba, None, 1)[..., 0], luma)
    np.testing.assert_array_equal(conform_image(rgba, (6, 4), 3), rgba[..., :3])
    pil = np.asarray(Image.fromarray(rgba[..., :3]).resize((2, 3), Image.Resampling.BILINEAR))
    half = conform_image(rgba, (3, 2), 3)
    assert np.abs(half.astype(int) - pil).max() <= 1
    grey = conform_image(rgba[..., :1], (3, 2), 3)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


# Calls that resize an image: each library's spelling.
RESIZE = re.compile(
    r"tf\.image\.resize|image_ops\.resize|ScaleAndTranslate\(|scale_and_translate|Resampling|"
    r"\.resize\(\s*\(|\.thumbnail\(|\bcv2\b|skimage|ndimage\.zoom"
)


def test_nothing_else_resizes_an_image():
    found = []
    for path in sorted((ROOT / "tripletlab").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if RESIZE.search(code):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert len(found) == 1 and found[0].startswith("tripletlab/data/preprocess.py:"), found
    assert 'method="bilinear", antialias=True' in found[0]
