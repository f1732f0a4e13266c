"""Tiny copies of the benchmark archives, in exactly their published layouts.

Each writer puts ``classes`` classes of ``per_class`` small colour JPEGs (sizes vary, so
resizing is exercised) under ``root`` as the real archive unpacks, and returns the folder
that ``dataset.root`` should name. Pixel values encode the class (plus noise), so a
model can learn them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZES = ((40, 30), (36, 48), (32, 32))


def write_jpeg(path: Path, label: int, index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = SIZES[index % len(SIZES)]
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
