"""Shared test helpers (the only module test files import from besides tripletlab).

- the repository, the real config and tiny overrides: ``ROOT``, ``TINY``, ``tiny()``,
  ``compose()``;
- run folders: read their files, and make one look killed (``simulate_kill``);
- small generated datasets: IDX folders, image folders, a local HTTP mirror;
- tiny copies of the benchmark archives in their published layouts;
- TensorBoard's projector plugin driven like a browser: ``ProjectorServer``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from tripletlab.data import IDX_FILES, write_idx

# ------------------------------------------------------------------ repository and configs
ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# Overrides that shrink any run to seconds on digits.
TINY = [
    "dataset=digits",
    "sampler=pk",
    "sampler.classes_per_batch=4",
    "sampler.images_per_class=4",
    "model.embedding_size=8",
    "model.num_channels=4",
    "trainer.epochs=1",
    "trainer.warmup_epochs=0",
    "eval.max_points=100",
    "trainer.progress=log",
]


def tiny(model: str | None = None, sampler: str = "pk") -> list[str]:
    """TINY for another model (a name, or several for a sweep: "lenet,small_cnn") or
    sampler, without the keys those options lack: only small_cnn and vgg_gap have
    model.num_channels, only pk has sampler.classes_per_batch / images_per_class."""
    out = [o for o in TINY if not o.startswith(("sampler", "model.num_channels"))]
    if model is None or model in ("small_cnn", "vgg_gap"):
        out.append("model.num_channels=4")
    if model is not None:
        out.append(f"model={model}")
    if sampler == "pk":
        return [*out, "sampler=pk", "sampler.classes_per_batch=4", "sampler.images_per_class=4"]
    return [*out, f"sampler={sampler}"]


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tripletlab.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(
            config_name="config",
            overrides=list(overrides or []),
            return_hydra_config=return_hydra_config,
        )


# ------------------------------------------------------------------ run folders
def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def checkpoint_numbers(run_dir: Path) -> list[int]:
    """The epochs that have a checkpoint, from the files CheckpointManager writes."""
    indexes = (run_dir / "checkpoints").glob("ckpt-*.index")
    return sorted(int(p.name[len("ckpt-") : -len(".index")]) for p in indexes)


def latest_checkpoint(run_dir: Path) -> str | None:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(run_dir / "checkpoints"))


def simulate_kill(src: Path, dst: Path, rows_kept: int, checkpoints_kept: list[int]) -> None:
    """``dst``: ``src`` as a kill would have left it after ``rows_kept`` epochs, with only
    ``checkpoints_kept`` saved: later checkpoints, rows and the end-of-run artefacts are
    gone, the checkpoint index names the last kept one, and the status is interrupted."""
    shutil.copytree(src, dst)
    ckpt_dir = dst / "checkpoints"
    for number in checkpoint_numbers(dst):
        if number not in checkpoints_kept:
            for f in ckpt_dir.glob(f"ckpt-{number}.*"):
                f.unlink()
    # The index file of tf.train.CheckpointManager (a text proto), as it was then.
    lines = [f'model_checkpoint_path: "ckpt-{checkpoints_kept[-1]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{n}"' for n in checkpoints_kept]
    (ckpt_dir / "checkpoint").write_text("\n".join(lines) + "\n")
    with (dst / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    with (dst / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows[:rows_kept])
    for name in ("model", "plots", "projector"):
        shutil.rmtree(dst / name, ignore_errors=True)
    summary = read_summary(dst)
    summary.update(status="interrupted", error="interrupted by the user", epochs_done=rows_kept)
    (dst / "summary.json").write_text(json.dumps(summary))
    assert checkpoint_numbers(dst) == checkpoints_kept
    assert latest_checkpoint(dst).endswith(f"ckpt-{checkpoints_kept[-1]}")


# ------------------------------------------------------------------ generated datasets
def isolate_data_search(tmp_path: Path, monkeypatch) -> Path:
    """No test sees the machine's data, home folder or proxies (call it from a fixture).

    Returns where a Fashion-MNIST download would go (~/.keras/datasets/fashion-mnist).
    """
    from tripletlab.data import idx

    monkeypatch.delenv("TRIPLETLAB_DATA", raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(idx, "SYSTEM_DATASETS", tmp_path / "system")
    return tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist"


def write_digit_gallery(root: Path, digits, classes, per_class: int) -> Path:
    """PNGs of digits test images in class sub-folders, in other sizes and channels than
    the model's (16x16, RGB for half of them), so embedding has to convert them."""
    for name in classes:
        members = np.flatnonzero(digits.y_test == int(name))[:per_class]
        (root / name).mkdir(parents=True)
        for j, i in enumerate(members):
            im = Image.fromarray(digits.x_test[i][..., 0]).resize((16, 16))
            (im.convert("RGB") if j % 2 else im).save(root / name / f"{i}.png")
    return root


def idx_arrays(
    n: int, shape: tuple[int, int] = (6, 6), num_classes: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and labels cycling through every class."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    y = (np.arange(n) % num_classes).astype(np.uint8)
    return x, y


def write_idx_folder(
    folder: Path,
    n_train: int = 20,
    n_test: int = 10,
    gz: bool = True,
    shape: tuple[int, int] = (6, 6),
    sorted_labels: bool = False,
) -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST-style IDX files; return the arrays by IDX_FILES key."""
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = idx_arrays(n_train, shape, seed=1)
    x_test, y_test = idx_arrays(n_test, shape, seed=2)
    if sorted_labels:  # all of class 0 first: a plain prefix would hold one class only
        y_train, y_test = np.sort(y_train), np.sort(y_test)
    arrays = {
        "train_images": x_train,
        "train_labels": y_train,
        "test_images": x_test,
        "test_labels": y_test,
    }
    suffix = ".gz" if gz else ""
    for key, array in arrays.items():
        write_idx(folder / f"{IDX_FILES[key]}{suffix}", array)
    return arrays


def write_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_image_folder(
    root: Path,
    counts: dict[str, int],
    size: tuple[int, int] = (8, 8),
    colour: bool = False,
    ext: str = ".png",
    seed: int = 0,
) -> None:
    """One sub-folder per class holding ``counts[class]`` random images."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if colour else (size[1], size[0])
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            write_image(root / name / f"{i}{ext}", rng.integers(0, 256, shape, dtype=np.uint8))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep request lines out of the test output


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 in a thread; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # A short poll interval: shutdown() waits for the next poll (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ------------------------------------------------------------------ benchmark layouts
LAYOUT_IMAGE_SIZES = ((40, 30), (36, 48), (32, 32))


def write_jpeg(path: Path, label: int, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = LAYOUT_IMAGE_SIZES[index % len(LAYOUT_IMAGE_SIZES)]
    rng = np.random.default_rng([label, index])
    colour = np.array([(label * 53) % 256, (label * 97) % 256, (label * 151) % 256])
    pixels = np.clip(colour + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_cub(root: Path, classes: int = 4, per_class: int = 3, split_file: bool = True) -> Path:
    """CUB_200_2011/: images.txt, image_class_labels.txt, classes.txt, train_test_split.txt,
    images/<id>.<Name>/<Name>_<n>.jpg."""
    folder = root / "CUB_200_2011"
    images, labels, names, split = [], [], [], []
    image_id = 0
    for c in range(1, classes + 1):
        name = f"{c:03d}.Bird_{c}"
        names.append(f"{c} {name}")
        for i in range(per_class):
            image_id += 1
            rel = f"{name}/Bird_{c}_{i:04d}_{image_id}.jpg"
            write_jpeg(folder / "images" / rel, c, i)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i != 0)}")  # the first image of a class is test
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    if split_file:
        (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return folder


def write_cars(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    """cars_annos.mat (annotations: relative_im_path, bbox_*, class, test; class_names)
    and car_ims/<6 digits>.jpg, as in car_ims.tgz."""
    import scipy.io

    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    n = classes * per_class
    annotations = np.zeros((1, n), dtype=[(f, "O") for f in fields])
    for k in range(n):
        c, i = k // per_class + 1, k % per_class
        rel = f"car_ims/{k + 1:06d}.jpg"
        write_jpeg(root / rel, c, i)
        annotations[0, k] = (rel, 1, 1, 20, 20, c, int(i == 0))
    names = np.empty((1, classes), dtype=object)
    for c in range(classes):
        names[0, c] = f"Maker Model {c + 1} 2012"
    scipy.io.savemat(
        str(root / "cars_annos.mat"), {"annotations": annotations, "class_names": names}
    )
    return root


def write_sop(
    root: Path, train_classes: int = 3, test_classes: int = 3, per_class: int = 2
) -> Path:
    """Stanford_Online_Products/: Ebay_train.txt, Ebay_test.txt (image_id class_id
    super_class_id path) and <category>_final/<product>_<n>.JPG."""
    folder = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    lines = {"train": [header], "test": [header]}
    image_id = 0
    for c in range(1, train_classes + test_classes + 1):
        split = "train" if c <= train_classes else "test"
        category, super_id = ("bicycle_final", 1) if c % 2 else ("chair_final", 2)
        for i in range(per_class):
            image_id += 1
            rel = f"{category}/{111085122800 + c}_{i}.JPG"
            write_jpeg(folder / rel, c, i)
            lines[split].append(f"{image_id} {c} {super_id} {rel}")
    for split, rows in lines.items():
        (folder / f"Ebay_{split}.txt").write_text("\n".join(rows) + "\n")
    return folder


def write_inshop(
    root: Path, train_items: int = 3, test_items: int = 3, nested: bool = False
) -> Path:
    """list_eval_partition.txt (a count, a header, then image_name item_id status) and
    img/WOMEN/Dresses/id_<8 digits>/<n>_<view>.jpg; ``nested``: Eval/ and Img/img/ as in
    the download. Train items have 3 images; a test item 1 query and 2 gallery images."""
    rows = []
    views = ("1_front", "2_side", "3_back")
    for item in range(1, train_items + test_items + 1):
        item_id = f"id_{item:08d}"
        for v, view in enumerate(views):
            name = f"img/WOMEN/Dresses/{item_id}/{v + 1:02d}_{view}.jpg"
            write_jpeg((root / "Img" if nested else root) / name, item, v)
            status = "train" if item <= train_items else ("query" if v == 0 else "gallery")
            rows.append(f"{name} {item_id} {status}")
    listing = (
        root / "Eval" / "list_eval_partition.txt" if nested else root / "list_eval_partition.txt"
    )
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    )
    return root


# ------------------------------------------------------------------ TensorBoard's projector
class ProjectorServer:
    """TensorBoard's projector plugin, called through its WSGI routes like the browser does."""

    def __init__(self, logdir, data_provider=None):
        from tensorboard.plugins import base_plugin
        from tensorboard.plugins.projector import projector_plugin

        # With no data provider the plugin still serves the logdir itself as run ".".
        context = base_plugin.TBContext(logdir=str(logdir), data_provider=data_provider)
        self.apps = projector_plugin.ProjectorPlugin(context).get_plugin_apps()

    def get(self, route, **args):
        from werkzeug.test import Client

        response = Client(self.apps[route]).get(route, query_string=args)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response

    def json(self, route, **args):
        return json.loads(self.get(route, **args).get_data(as_text=True))
