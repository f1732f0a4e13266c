"""Tests for tripletlab.tracking.projector, through TensorBoard's own projector plugin."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer

from tests.helpers import ProjectorServer
from tripletlab.errors import ConfigError, DataError
from tripletlab.tracking import projector
from tripletlab.tracking.projector import checkpoint_tensor_name, write_projector

TENSOR = checkpoint_tensor_name("embedding")  # the name itself


def _gray_images(n, h, w):
    """uint8 [n, h, w, 1]; image i is filled with the value 10 * (i + 1)."""
    values = 10 * (np.arange(n, dtype=np.uint8) + 1)
    return np.broadcast_to(values[:, None, None, None], (n, h, w, 1)).copy()


def _tile(sprite: np.ndarray, i: int, h: int, w: int, grid: int) -> np.ndarray:
    row, col = divmod(i, grid)
    return sprite[row * h : (row + 1) * h, col * w : (col + 1) * w]


def test_round_trip_through_tensorboard_plugin(tmp_path):
    n, d, h, w = 7, 4, 3, 5  # non-square thumbnails catch a swapped [width, height]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, d))
    labels = np.array([2, 0, 1, 2, 0, 1, 1])
    names = ["cat", "dog\twith tab", "line\nbreak"]
    out = tmp_path / "projector"  # does not exist yet: write_projector creates it
    write_projector(out, emb, labels, names, _gray_images(n, h, w))

    server = ProjectorServer(out)
    assert server.json("/runs") == ["."]

    (info,) = server.json("/info", run=".")["embeddings"]
    assert info["tensorName"] == TENSOR
    assert [int(s) for s in info["tensorShape"]] == [n, d]
    assert info["metadataPath"] == "metadata.tsv"
    assert info["sprite"] == {"imagePath": "sprite.png", "singleImageDim": [w, h]}

    raw = server.get("/tensor", run=".", name=TENSOR).get_data()
    np.testing.assert_array_equal(
        np.frombuffer(raw, np.float32).reshape(n, d), emb.astype(np.float32)
    )

    rows = server.get("/metadata", run=".", name=TENSOR).get_data(as_text=True).splitlines()
    assert rows[0] == "label\tclass_name"
    assert [row.split("\t") for row in rows[1:]] == [
        [str(y), names[y].replace("\t", " ").replace("\n", " ")] for y in labels
    ]

    png = server.get("/sprite_image", run=".", name=TENSOR)
    assert png.mimetype == "image/png"
    sprite = np.asarray(Image.open(io.BytesIO(png.get_data())))
    grid = math.ceil(math.sqrt(n))  # 3
    assert sprite.shape == (grid * h, grid * w)  # grayscale
    for i in range(grid * grid):
        expected = 10 * (i + 1) if i < n else 0  # the tail is padded with black
        assert (_tile(sprite, i, h, w, grid) == expected).all(), i

    # The standalone pair for projector.tensorflow.org.
    vectors = np.loadtxt(out / "vectors.tsv", delimiter="\t", dtype=np.float32, ndmin=2)
    np.testing.assert_array_equal(vectors, emb.astype(np.float32))


def test_projector_as_a_run_under_a_parent_logdir(tmp_path):
    # The usual layout: TensorBoard on the experiment folder, projector in a run folder
    # (a folder with event files), read through a real multiplexer and data provider.
    run_dir = tmp_path / "logs" / "validation"
    with tf.summary.create_file_writer(str(run_dir)).as_default():
        tf.summary.scalar("map_at_r", 0.5, step=0)
    n = 5
    emb = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    images = np.linspace(0, 1, n)[:, None, None, None] * np.ones((n, 4, 4, 3))  # float RGB
    name = "digits test (5 points)"  # what a person reads in the projector's menu
    write_projector(run_dir, emb, np.arange(n) % 2, ["even", "odd"], images, tensor_name=name)

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path / "logs"))
    multiplexer.Reload()
    provider = tb_data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path / "logs"))
    server = ProjectorServer(tmp_path / "logs", provider)

    assert server.json("/runs") == ["validation"]
    (info,) = server.json("/info", run="validation")["embeddings"]
    assert info["tensorName"] == checkpoint_tensor_name(name) == name
    raw = server.get("/tensor", run="validation", name=name).get_data()
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(n, 2), emb)
    sprite = np.asarray(
        Image.open(io.BytesIO(server.get("/sprite_image", run="validation", name=name).data))
    )
    assert sprite.shape == (3 * 4, 3 * 4, 3)
    for i in range(n):
        assert (_tile(sprite, i, 4, 4, 3) == round(255 * i / (n - 1))).all(), i


def test_big_sprites_are_shrunk_in_order_and_huge_ones_refused(tmp_path, monkeypatch):
    # A small limit stands in for 8192 so the test needs no huge arrays.
    monkeypatch.setattr(projector, "MAX_SPRITE_SIDE", 20)
    n = 5
    images = _gray_images(n, 8, 8)[..., 0]  # [N, H, W] is accepted as grayscale
    write_projector(tmp_path / "a", np.ones((n, 3)), np.zeros(n, int), ["x"], images)
    (info,) = ProjectorServer(tmp_path / "a").json("/info", run=".")["embeddings"]
    # grid 3 x 8 px = 24 > 20 -> thumbnails of 20 // 3 = 6 px.
    assert info["sprite"]["singleImageDim"] == [6, 6]
    sprite = np.asarray(Image.open(tmp_path / "a" / "sprite.png"))
    assert sprite.shape == (18, 18)
    for i in range(n):  # uniform tiles survive "area" resizing exactly
        assert (_tile(sprite, i, 6, 6, 3) == 10 * (i + 1)).all(), i

    monkeypatch.setattr(projector, "MAX_SPRITE_SIDE", 2)  # 5 points need a 3 x 3 grid
    with pytest.raises(DataError, match="do not fit"):
        write_projector(tmp_path / "b", np.ones((n, 3)), np.zeros(n, int), ["x"], images)


def test_without_images_no_sprite(tmp_path):
    write_projector(tmp_path, np.eye(3), [0, 1, 0], ["a", "b"], None)
    assert not (tmp_path / "sprite.png").exists()
    server = ProjectorServer(tmp_path)
    (info,) = server.json("/info", run=".")["embeddings"]
    assert "sprite" not in info
    assert len(server.get("/metadata", run=".", name=TENSOR).get_data().splitlines()) == 4


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"labels": [0, 1, 5]}, DataError),  # no class name for label 5
        ({"labels": [0, 1]}, DataError),  # wrong length
        ({"embeddings": np.full((3, 2), np.nan)}, DataError),
        ({"images": np.full((3, 2, 2), 255.0)}, DataError),  # float on the wrong scale
        ({"images": np.zeros((2, 2, 2), np.uint8)}, DataError),  # one image missing
        ({"images": np.zeros((3, 2, 2, 2), np.uint8)}, DataError),  # 2 channels
        ({"tensor_name": "a\nb"}, ConfigError),  # a control character
        ({"tensor_name": ""}, ConfigError),
        ({"tensor_name": " padded"}, ConfigError),
        ({"tensor_name": "x" * 101}, ConfigError),
    ],
)
def test_bad_input_raises(tmp_path, kwargs, error):
    args = {
        "embeddings": np.eye(3),
        "labels": [0, 1, 0],
        "class_names": ["a", "b"],
        "images": np.zeros((3, 2, 2), np.uint8),
        **kwargs,
    }
    with pytest.raises(error):
        write_projector(tmp_path, **args)


def test_sampled_points_keep_their_label_and_image_row_by_row(tmp_path):
    """A split larger than max_points: the run's projector (artifacts.write_views) shows a
    sample, and every row of metadata.tsv, the sprite and the checkpoint tensor belongs to
    the same point as that row of vectors.tsv. Point j has the embedding (j, its label),
    the label j % 10 and an image whose two pixels spell j in base 256."""
    from tripletlab.artifacts import write_views
    from tripletlab.run_folder import RunFolder

    n, max_points = 600, 50
    index = np.arange(n)
    labels = index % 10
    embeddings = np.stack([index, labels], axis=1).astype(np.float32)
    images = np.stack([index // 256, index % 256], axis=1).astype(np.uint8)[:, None, :, None]
    names = [f"class {k}" for k in range(10)]
    folder = RunFolder(tmp_path / "run")

    shown = write_views(folder, [], embeddings, labels, images, names, max_points, "digits test")

    out = folder.projector_dir
    vectors = np.loadtxt(out / "vectors.tsv", delimiter="\t", dtype=np.float32, ndmin=2)
    assert shown == max_points == len(vectors)
    points = vectors[:, 0].astype(int)
    # A sample from the whole split, each point once, in the split's order.
    assert (np.diff(points) > 0).all() and points[-1] >= max_points
    np.testing.assert_array_equal(vectors, embeddings[points])

    rows = (out / "metadata.tsv").read_text().splitlines()
    assert rows[0] == "label\tclass_name"
    assert [row.split("\t") for row in rows[1:]] == [
        [str(j % 10), f"class {j % 10}"] for j in points
    ]

    reader = tf.train.load_checkpoint(str(out / "embedding.ckpt"))
    np.testing.assert_array_equal(reader.get_tensor("digits test"), vectors)

    sprite = np.asarray(Image.open(out / "sprite.png"))
    grid = math.ceil(math.sqrt(max_points))
    assert sprite.shape == (grid * 1, grid * 2)
    for i, j in enumerate(points):
        high, low = _tile(sprite, i, 1, 2, grid)[0].astype(int)
        assert high * 256 + low == j, (i, j)
