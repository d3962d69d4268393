"""services.dataset.domain.layout: which ZIP entries are images, labels, splits and class-name files."""

from __future__ import annotations

import io
import zipfile

import pytest

from services.common.archives import ZipLimits, safe_entries
from services.dataset.domain.layout import ZipLayout, read_layout
from tests.unit.zips import zip_bytes


def layout_of(*names: str) -> ZipLayout:
    """The layout of a real ZIP holding `names` (contents do not matter to layout detection)."""
    data = zip_bytes([(name, b"" if name.endswith("/") else b"x") for name in names])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return read_layout(safe_entries(archive, ZipLimits()))


def pairs(layout: ZipLayout) -> dict[str, tuple[str | None, str | None]]:
    """image -> (split, label) for compact assertions."""
    return {i.entry.name: (i.split, i.label.name if i.label else None) for i in layout.images}


def test_flat_images_and_labels() -> None:
    layout = layout_of("images/", "images/a.jpg", "images/b.png", "labels/", "labels/a.txt", "labels/b.txt")
    assert pairs(layout) == {"images/a.jpg": (None, "labels/a.txt"), "images/b.png": (None, "labels/b.txt")}
    assert not layout.pre_split
    assert layout.describe() == "images/ + labels/"
    assert layout.orphan_labels == [] and layout.ignored == 0


def test_images_only() -> None:
    layout = layout_of("images/a.jpg", "images/b.jpeg", "c.webp", "d.bmp")
    assert pairs(layout) == {
        "c.webp": (None, None),
        "d.bmp": (None, None),
        "images/a.jpg": (None, None),
        "images/b.jpeg": (None, None),
    }
    assert layout.describe() == "images only"


def test_ultralytics_pre_split() -> None:
    layout = layout_of(
        "images/train/a.jpg",
        "images/train/b.jpg",
        "images/val/c.jpg",
        "images/test/d.jpg",
        "labels/train/a.txt",
        "labels/val/c.txt",
        "labels/test/d.txt",
        "data.yaml",
    )
    assert pairs(layout) == {
        "images/train/a.jpg": ("train", "labels/train/a.txt"),
        "images/train/b.jpg": ("train", None),
        "images/val/c.jpg": ("val", "labels/val/c.txt"),
        "images/test/d.jpg": ("test", "labels/test/d.txt"),
    }
    assert layout.pre_split
    assert layout.describe() == "images/ + labels/ (pre-split)"
    assert layout.data_yaml is not None and layout.data_yaml.name == "data.yaml"


def test_roboflow_export_with_valid_folder() -> None:
    layout = layout_of(
        "train/images/a.jpg",
        "train/labels/a.txt",
        "valid/images/b.jpg",
        "valid/labels/b.txt",
        "test/images/c.jpg",
        "test/labels/c.txt",
        "data.yaml",
        "README.roboflow.txt",
    )
    assert pairs(layout) == {
        "train/images/a.jpg": ("train", "train/labels/a.txt"),
        "valid/images/b.jpg": ("val", "valid/labels/b.txt"),
        "test/images/c.jpg": ("test", "test/labels/c.txt"),
    }
    assert layout.pre_split
    assert layout.ignored == 1  # the README


@pytest.mark.parametrize("wrapper", ["my_dataset/", "exports/2024/coco-subset v3/"])
def test_top_level_folders_are_transparent(wrapper: str) -> None:
    layout = layout_of(
        f"{wrapper}images/training/a.jpg",
        f"{wrapper}labels/training/a.txt",
        f"{wrapper}images/validation/b.jpg",
        f"{wrapper}labels/validation/b.txt",
        f"{wrapper}data.yaml",
        f"{wrapper}classes.txt",
    )
    assert pairs(layout) == {
        f"{wrapper}images/training/a.jpg": ("train", f"{wrapper}labels/training/a.txt"),
        f"{wrapper}images/validation/b.jpg": ("val", f"{wrapper}labels/validation/b.txt"),
    }
    assert layout.pre_split
    assert layout.data_yaml is not None and layout.data_yaml.name == f"{wrapper}data.yaml"
    assert layout.classes_txt is not None and layout.classes_txt.name == f"{wrapper}classes.txt"


def test_darknet_style_labels_beside_images() -> None:
    layout = layout_of("obj_train_data/a.jpg", "obj_train_data/a.txt", "obj.names", "train.txt")
    assert pairs(layout) == {"obj_train_data/a.jpg": (None, "obj_train_data/a.txt")}
    assert layout.classes_txt is not None and layout.classes_txt.name == "obj.names"
    assert layout.ignored == 1  # train.txt, an image list


def test_label_beside_an_image_inside_images_folder() -> None:
    layout = layout_of("images/a.jpg", "images/a.txt")
    assert pairs(layout) == {"images/a.jpg": (None, "images/a.txt")}


def test_labels_folder_wins_over_a_text_file_beside_the_image() -> None:
    layout = layout_of("images/a.jpg", "images/a.txt", "labels/a.txt")
    assert pairs(layout) == {"images/a.jpg": (None, "labels/a.txt")}
    assert layout.ignored == 1  # images/a.txt is unused and not under labels/


def test_last_images_folder_is_mapped_to_labels() -> None:
    layout = layout_of("images/images/a.jpg", "images/labels/a.txt")
    assert pairs(layout) == {"images/images/a.jpg": (None, "images/labels/a.txt")}


def test_matching_is_case_insensitive() -> None:
    layout = layout_of(
        "Images/Train/IMG_1.JPG", "LABELS/train/img_1.TXT", "Images/VAL/IMG_2.Png", "labels/val/img_2.txt"
    )
    assert pairs(layout) == {
        "Images/Train/IMG_1.JPG": ("train", "LABELS/train/img_1.TXT"),
        "Images/VAL/IMG_2.Png": ("val", "labels/val/img_2.txt"),
    }
    assert layout.pre_split


def test_image_names_with_several_dots() -> None:
    layout = layout_of("images/frame.0001.v2.jpg", "labels/frame.0001.v2.txt")
    assert pairs(layout) == {"images/frame.0001.v2.jpg": (None, "labels/frame.0001.v2.txt")}


def test_junk_is_ignored() -> None:
    layout = layout_of(
        "images/a.jpg",
        "images/b.jpg",
        "labels/a.txt",
        "__MACOSX/images/._a.jpg",
        "__MACOSX/labels/._a.txt",
        "images/.DS_Store",
        ".hidden/c.jpg",
        "images/._b.jpg",
        "images/Thumbs.db",
        "desktop.ini",
        "notes.md",
        "images/video.mp4",
        "README.txt",
        "labels.cache",
    )
    assert pairs(layout) == {"images/a.jpg": (None, "labels/a.txt"), "images/b.jpg": (None, None)}
    assert layout.ignored == 11
    assert layout.orphan_labels == []


def test_labels_without_an_image_are_orphans() -> None:
    layout = layout_of("images/a.jpg", "labels/a.txt", "labels/z.txt", "labels/train/y.txt")
    assert [e.name for e in layout.orphan_labels] == ["labels/train/y.txt", "labels/z.txt"]
    assert layout.ignored == 0


def test_classes_txt_inside_labels_is_not_an_orphan_label() -> None:
    # LabelImg writes classes.txt next to the label files.
    layout = layout_of("images/a.jpg", "labels/a.txt", "labels/classes.txt")
    assert layout.orphan_labels == []
    assert layout.classes_txt is not None and layout.classes_txt.name == "labels/classes.txt"


def test_shallowest_data_yaml_wins() -> None:
    layout = layout_of("images/a.jpg", "z/deep/data.yaml", "b/dataset.yml", "a/data.yml", "x/y/classes.txt")
    assert layout.data_yaml is not None and layout.data_yaml.name == "a/data.yml"
    assert layout.classes_txt is not None and layout.classes_txt.name == "x/y/classes.txt"


def test_data_yaml_in_macosx_is_junk() -> None:
    layout = layout_of("images/a.jpg", "__MACOSX/data.yaml", "__MACOSX/._data.yaml")
    assert layout.data_yaml is None and layout.ignored == 2


@pytest.mark.parametrize(
    "names",
    [
        ("images/train/a.jpg", "images/train/b.jpg"),  # only train
        ("images/train/a.jpg", "images/val/b.jpg", "images/c.jpg"),  # one image outside any split
        ("images/val/a.jpg", "images/test/b.jpg"),  # no train
    ],
)
def test_not_pre_split_without_train_and_val_for_every_image(names: tuple[str, ...]) -> None:
    layout = layout_of(*names)
    assert not layout.pre_split
    assert "pre-split" not in layout.describe()


def test_deepest_split_folder_names_the_split() -> None:
    layout = layout_of("test_runs/train/images/val/a.jpg", "train/images/train/b.jpg")
    assert pairs(layout) == {
        "test_runs/train/images/val/a.jpg": ("val", None),
        "train/images/train/b.jpg": ("train", None),
    }


def test_images_are_sorted_by_name() -> None:
    layout = layout_of("images/c.jpg", "images/a.jpg", "images/b.jpg")
    assert [i.entry.name for i in layout.images] == ["images/a.jpg", "images/b.jpg", "images/c.jpg"]


def test_empty_archive() -> None:
    layout = layout_of("images/", "labels/")
    assert layout.images == [] and layout.ignored == 0
    assert layout.describe() == "images only"


def test_names_differing_only_in_case_keep_their_own_labels() -> None:
    layout = layout_of("images/A.jpg", "images/a.jpg", "labels/A.txt", "labels/a.txt")
    assert pairs(layout) == {"images/A.jpg": (None, "labels/A.txt"), "images/a.jpg": (None, "labels/a.txt")}
