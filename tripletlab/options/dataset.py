"""``dataset=<name>``: the schemas and entries of the package's datasets; the code is in
:mod:`tripletlab.data` (each source attaches itself with ``@DATASETS.register``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from tripletlab.errors import ConfigError
from tripletlab.options import setting
from tripletlab.registry import DATASETS, Option

DATASET_SPLITS = ("original", "classes")
STREAM_CHOICES = ("auto", "true", "false")


@dataclass
class DatasetConfig:
    """The keys every dataset has; each option's schema below adds its own."""

    name: str = setting(MISSING, "the dataset, chosen with dataset=<name>")
    image_size: int | None = setting(
        None, "resize to image_size x image_size; null keeps the native size", bound=">0"
    )
    channels: int | None = setting(
        None, "1 (grayscale) or 3 (RGB); null keeps the native channels", choices=(1, 3)
    )
    split_seed: int = setting(
        0, "seeds the train/test split and the max_train/max_test subsets, whatever the seed"
    )
    max_train: int | None = setting(
        None, "keep N training images, a random subset seeded by split_seed; null: all", bound=">0"
    )
    max_test: int | None = setting(
        None, "keep N test images, a random subset seeded by split_seed; null: all", bound=">0"
    )
    split: str = setting(
        "original",
        "original: the dataset's own train/test split; classes: pool the splits, train on the "
        "first half of the classes (or train_classes), test on the others (unseen classes)",
        choices=DATASET_SPLITS,
    )
    train_classes: list[Any] | None = setting(
        None, "class names or ids to train on, with split=classes"
    )
    val_classes: int | None = setting(
        None,
        "with split=classes: hold out N training classes (picked by split_seed) and evaluate "
        "on them instead of the test classes, for tuning; null: evaluate on the test classes",
        bound=">0",
    )

    def check(self, cfg: Any) -> None:
        for key in ("train_classes", "val_classes"):
            if getattr(self, key, None) is not None and self.split != "classes":
                raise ConfigError(
                    f"dataset.{key} is set but dataset.split={self.split}: add "
                    "dataset.split=classes"
                )


@dataclass
class IdxDatasetConfig(DatasetConfig):
    """IDX files, found locally or downloaded (fashion_mnist, mnist)."""

    root: str | None = setting(None, "folder with the IDX files; null searches the usual places")
    download: bool = setting(True, "fall back to the official mirror when no local copy exists")
    url: str | None = setting(None, "mirror override; null: the official one")
    allow_insecure_url: bool = setting(False, "allow an http:// or file:// url (no TLS: opt in)")


@dataclass
class FashionMnistConfig(IdxDatasetConfig):
    name: str = "fashion_mnist"


@dataclass
class MnistConfig(IdxDatasetConfig):
    name: str = "mnist"


@dataclass
class DigitsConfig(DatasetConfig):
    name: str = "digits"
    test_fraction: float = setting(
        0.2, "share of each class held out for the test split", bound="(0,1)"
    )


@dataclass
class FilesDatasetConfig(DatasetConfig):
    """Image files on disk (image_folder and the benchmark layouts)."""

    root: str | None = setting(MISSING, "the dataset's folder")
    image_size: int | None = 224
    channels: int | None = 3
    stream: str = setting(
        "auto",
        "auto: stream from disk when decoding every image would take more than 1 GiB",
        choices=STREAM_CHOICES,
    )
    verify: bool = setting(
        True, "read every streamed file's header before training (names bad files)"
    )


@dataclass
class ImageFolderConfig(FilesDatasetConfig):
    name: str = "image_folder"
    root: str | None = setting(
        MISSING, "root/<class>/*.png, or root/train/<class> and root/test/<class>"
    )
    image_size: int | None = 64
    channels: int | None = None
    test_fraction: float = setting(
        0.2,
        "share of each class held out for the test split, without train/ and test/",
        bound="(0,1)",
    )


@dataclass
class Cub200Config(FilesDatasetConfig):
    name: str = "cub200"
    root: str | None = setting(MISSING, "the CUB_200_2011 folder (images.txt, images/, ...)")
    split: str = setting(
        "classes", "classes: classes 1-100 train, 101-200 test; original: train_test_split.txt"
    )


@dataclass
class Cars196Config(FilesDatasetConfig):
    name: str = "cars196"
    root: str | None = setting(MISSING, "the folder with cars_annos.mat and car_ims/")
    split: str = setting(
        "classes", "classes: classes 1-98 train, 99-196 test; original: the annotations' test flag"
    )


@dataclass
class SopConfig(FilesDatasetConfig):
    name: str = "sop"
    root: str | None = setting(
        MISSING, "Stanford_Online_Products (Ebay_train.txt, Ebay_test.txt, ...)"
    )


@dataclass
class InShopConfig(FilesDatasetConfig):
    name: str = "inshop"
    root: str | None = setting(
        MISSING, "the folder with list_eval_partition.txt (or Eval/) and img/ (or Img/img/)"
    )


for _schema in (
    FashionMnistConfig,
    MnistConfig,
    DigitsConfig,
    ImageFolderConfig,
    Cub200Config,
    Cars196Config,
    SopConfig,
    InShopConfig,
):
    DATASETS.add(Option(_schema.name, _schema))


@dataclass
class CustomDatasetConfig(DatasetConfig):
    """``dataset=custom dataset._target_=my_module.load``: the user's loader, called with
    ``hydra.utils.instantiate`` (docs/extending.md has the contract)."""

    name: str = "custom"
    _target_: str = setting(
        MISSING,
        "dotted path of a callable(cfg) -> (x_train, y_train, x_test, y_test, class_names): "
        "uint8 images [N, H, W, C], int labels [N]",
    )


DATASETS.add(Option("custom", CustomDatasetConfig, target="tripletlab.targets:CUSTOM_DATASET"))
