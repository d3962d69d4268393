"""services.dataset.domain.prepare.prepare_version on real ZIPs of real images, in several layouts."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from services.common.archives import ZipLimits
from services.common.errors import InvalidArgument
from services.dataset.domain.prepare import PreparedContent, PrepareOptions, Rejection, prepare_version
from services.dataset.domain.splitting import DEFAULT_SPLIT, SplitRatio
from tests.unit.zips import jpeg_bytes, label_line, png_bytes, png_declaring, write_zip

Members = dict[str, bytes]

OPTIONS = PrepareOptions(
    split_ratio=None,
    classes=[],
    seed="ds_20240101_000000",
    zip_limits=ZipLimits(),
    max_image_pixels=1_000_000,
    workers=4,
)


def labelled(names: list[str], *, image_dir: str = "images", label_dir: str = "labels", class_id: int = 0) -> Members:
    """One JPEG per name under image_dir and a one-box label per name under label_dir."""
    members: Members = {}
    for index, name in enumerate(names):
        members[f"{image_dir}/{name}.jpg"] = jpeg_bytes(32 + index, 24, color=(index * 10 % 256, 80, 160))
        members[f"{label_dir}/{name}.txt"] = f"{label_line(class_id)}\n".encode()
    return members


class Prepared:
    """The outcome of one prepare_version run and where it wrote."""

    def __init__(self, content: PreparedContent, staging: Path, final_dir: Path) -> None:
        self.content = content
        self.staging = staging
        self.final_dir = final_dir
        self.report = content.report

    def data_yaml(self) -> dict:
        return yaml.safe_load((self.staging / "data.yaml").read_text(encoding="utf-8"))

    def counts(self) -> dict[str, int]:
        return dict(Counter(image.split for image in self.content.images))

    def label(self, image_id: str) -> str:
        image = next(i for i in self.content.images if i.image_id == image_id)
        return (self.staging / "labels" / image.split / f"{image_id}.txt").read_text()

    def assignment(self) -> list[tuple[str, str]]:
        return sorted((image.image_id, image.split) for image in self.content.images)


def prepare(tmp_path: Path, members: Members, name: str = "run", **changes: object) -> Prepared:
    run_dir = tmp_path / name
    run_dir.mkdir()
    zip_path = write_zip(run_dir / "upload.zip", members)
    staging = run_dir / ".staging-1"
    staging.mkdir()
    final_dir = run_dir / "v1"
    content = prepare_version(zip_path, staging, final_dir, dataclasses.replace(OPTIONS, **changes))
    return Prepared(content, staging, final_dir)


def refused(tmp_path: Path, members: Members, **changes: object) -> str:
    with pytest.raises(InvalidArgument) as caught:
        prepare(tmp_path, members, **changes)
    return caught.value.detail


# -- the happy path --------------------------------------------------------------------------------------


def test_flat_layout_is_split_by_the_default_ratio(tmp_path: Path) -> None:
    members = labelled([f"img{i}" for i in range(10)])
    members["data.yaml"] = b"names: [cat, dog]\n"
    members["labels/img3.txt"] = f"{label_line(0)}\n{label_line(1, 0.2, 0.2, 0.1, 0.1)}\n".encode()
    result = prepare(tmp_path, members)

    assert result.content.classes == ["cat", "dog"]
    assert result.content.split_ratio == DEFAULT_SPLIT
    assert result.counts() == {"train": 8, "val": 2}
    assert result.content.count("train") == 8 and result.content.count("test") == 0
    report = result.report
    assert (report.layout, report.images_found, report.images_accepted) == ("images/ + labels/", 10, 10)
    assert (report.label_files_found, report.label_lines_accepted) == (10, 11)
    assert report.rejected_images == [] and report.rejected_labels == [] and report.warnings == []
    assert report.ignored_files == 0

    # Files on disk: images renamed into their split, labels rewritten in canonical form, pool gone.
    assert sorted(p.name for p in result.staging.iterdir()) == ["data.yaml", "images", "labels"]
    for image in result.content.images:
        assert image.relpath == f"images/{image.split}/{image.image_id}.jpg"
        original = members[f"images/{image.image_id}.jpg"]
        assert (result.staging / image.relpath).read_bytes() == original
        with Image.open(result.staging / image.relpath) as decoded:
            assert decoded.size == (image.width, image.height)
    assert result.label("img0") == "0 0.500000 0.500000 0.200000 0.200000\n"
    assert result.label("img3") == "0 0.500000 0.500000 0.200000 0.200000\n1 0.200000 0.200000 0.100000 0.100000\n"
    assert len(list((result.staging / "labels").rglob("*.txt"))) == 10


def test_data_yaml_is_written_for_the_final_directory(tmp_path: Path) -> None:
    members = labelled(["a", "b", "c", "d", "e"])
    members["classes.txt"] = "person\ntraffic light\n猫\n".encode()
    result = prepare(tmp_path, members, split_ratio=SplitRatio(0.6, 0.2, 0.2))
    config = result.data_yaml()
    assert config == {
        "path": str(result.final_dir),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "nc": 3,
        "names": {0: "person", 1: "traffic light", 2: "猫"},
    }
    assert result.counts() == {"train": 3, "val": 1, "test": 1}
    # Ultralytics resolves path/<split>: every listed split folder exists once published.
    for split in ("train", "val", "test"):
        assert (result.staging / config[split]).is_dir()


def test_data_yaml_leaves_out_an_unused_test_split(tmp_path: Path) -> None:
    config = prepare(tmp_path, labelled(["a", "b", "c"])).data_yaml()
    assert "test" not in config
    assert config == {
        "path": str(tmp_path / "run" / "v1"),
        "train": "images/train",
        "val": "images/val",
        "nc": 1,
        "names": {0: "class0"},
    }


def test_images_only_dataset(tmp_path: Path) -> None:
    members = {f"photos/{i}.png": png_bytes(10 + i, 10) for i in range(4)}
    result = prepare(tmp_path, members, classes=["car"])
    assert result.report.layout == "images only"
    assert result.content.classes == ["car"]
    assert list((result.staging / "labels").rglob("*.txt")) == []
    assert {(i.image_id, i.width) for i in result.content.images} == {("0", 10), ("1", 11), ("2", 12), ("3", 13)}
    assert result.report.warnings == []


def test_exif_rotated_image_reports_its_displayed_size(tmp_path: Path) -> None:
    members = labelled(["a", "b"])
    members["images/a.jpg"] = jpeg_bytes(60, 20, orientation=6)
    result = prepare(tmp_path, members)
    sizes = {i.image_id: (i.width, i.height) for i in result.content.images}
    assert sizes == {"a": (20, 60), "b": (33, 24)}


# -- classes -----------------------------------------------------------------------------------------------


CLASS_SOURCES: Members = {"data.yaml": b"names: {0: from_yaml_a, 1: from_yaml_b}\n", "classes.txt": b"txt_a\ntxt_b\n"}


@pytest.mark.parametrize(
    ("sources", "explicit", "expected"),
    [
        (["data.yaml", "classes.txt"], ["given_a", "given_b"], ["given_a", "given_b"]),
        (["data.yaml", "classes.txt"], [], ["from_yaml_a", "from_yaml_b"]),
        (["classes.txt"], [], ["txt_a", "txt_b"]),
        ([], [], ["class0", "class1"]),
    ],
)
def test_classes_source_precedence(
    tmp_path: Path, sources: list[str], explicit: list[str], expected: list[str]
) -> None:
    members = labelled(["a", "b", "c"])
    members["labels/c.txt"] = f"{label_line(1)}\n".encode()
    members.update({name: CLASS_SOURCES[name] for name in sources})
    result = prepare(tmp_path, members, classes=explicit)
    assert result.content.classes == expected
    assert result.data_yaml()["names"] == dict(enumerate(expected))
    assert result.data_yaml()["nc"] == len(expected)
    derived = [w for w in result.report.warnings if "class0..classN" in w]
    assert bool(derived) == (expected[0] == "class0")


def test_derived_classes_cover_the_highest_class_id(tmp_path: Path) -> None:
    members = labelled(["a", "b"])
    members["labels/b.txt"] = f"{label_line(4)}\n".encode()
    assert prepare(tmp_path, members).content.classes == ["class0", "class1", "class2", "class3", "class4"]


def test_a_huge_class_id_is_rejected_not_turned_into_a_million_class_names(tmp_path: Path) -> None:
    members = labelled(["a", "b", "c"])
    members["labels/b.txt"] = f"{label_line(1_000_000)}\n{label_line(1)}\n".encode()
    result = prepare(tmp_path, members)
    # Classes come from the labels of the images kept: b is left out, with its class 1 box.
    assert result.content.classes == ["class0"]
    [rejection] = result.report.rejected_labels
    assert (rejection.file, rejection.line) == ("labels/b.txt", 1) and "at most 10000" in rejection.reason
    assert [r.file for r in result.report.rejected_images] == ["images/b.jpg"]


def test_unusable_data_yaml_falls_back_to_classes_txt_with_a_warning(tmp_path: Path) -> None:
    members = labelled(["a", "b"])
    members["data.yaml"] = b"names: [unclosed\n"
    members["labels/classes.txt"] = b"only\n"
    result = prepare(tmp_path, members)
    assert result.content.classes == ["only"]
    assert len(result.report.warnings) == 1
    assert result.report.warnings[0].startswith("data.yaml: class names not usable")


def test_data_yaml_without_names_and_no_labels(tmp_path: Path) -> None:
    members = {"images/a.jpg": jpeg_bytes(), "images/b.jpg": jpeg_bytes(), "data.yaml": b"nc: 3\n"}
    result = prepare(tmp_path, members)
    assert result.content.classes == []
    assert result.data_yaml()["nc"] == 0
    assert any("no `names` list" in w for w in result.report.warnings)
    assert any("pass `classes`" in w for w in result.report.warnings)


def test_explicit_classes_bound_the_class_ids(tmp_path: Path) -> None:
    members = labelled(["a", "b", "c"])
    members["labels/b.txt"] = f"{label_line(0)}\n{label_line(1, 0.3)}\n".encode()
    result = prepare(tmp_path, members, classes=["only"])
    assert result.report.rejected_labels == [
        Rejection("labels/b.txt", 2, "class id 1 is out of range (dataset has 1 classes)")
    ]
    assert result.report.rejected_images == [
        Rejection(
            "images/b.jpg",
            0,
            "invalid label in labels/b.txt line 2: class id 1 is out of range (dataset has 1 classes)",
        )
    ]
    assert sorted(i.image_id for i in result.content.images) == ["a", "c"]


# -- rejections --------------------------------------------------------------------------------------------


def test_rejected_label_lines_have_file_line_and_reason(tmp_path: Path) -> None:
    members = labelled(["a", "b", "c", "d"])
    members["data.yaml"] = b"names: [cat, dog]\n"
    members["labels/a.txt"] = (
        b"0 0.5 0.5 0.2 0.2\n"  # 1: ok
        b"1 0.5 0.5 0.2\n"  # 2: four values
        b"2 0.5 0.5 0.2 0.2\n"  # 3: class out of range
        b"\n"  # 4: blank, skipped
        b"1 1.5 0.5 0.2 0.2\n"  # 5: not normalised
        b"0 0.5 0.5 0.2 0.2\n"  # 6: duplicate of 1
        b"1 0.25 0.25 0.1 0.1\n"  # 7: ok
    )
    members["labels/b.txt"] = b"\xff\xfe not utf-8"
    members["labels/orphan.txt"] = b"0 0.5 0.5 0.1 0.1\n"
    result = prepare(tmp_path, members)
    rejected = {(r.file, r.line): r.reason for r in result.report.rejected_labels}
    assert set(rejected) == {
        ("labels/orphan.txt", 0),
        ("labels/a.txt", 2),
        ("labels/a.txt", 3),
        ("labels/a.txt", 5),
        ("labels/a.txt", 6),
        ("labels/b.txt", 0),
    }
    assert rejected["labels/orphan.txt", 0] == "no image with the same name"
    assert rejected["labels/a.txt", 2].startswith("expected 5 values")
    assert "class id 2 is out of range" in rejected["labels/a.txt", 3]
    assert "not normalised" in rejected["labels/a.txt", 5]
    assert rejected["labels/a.txt", 6] == "duplicate of line 1"
    assert rejected["labels/b.txt", 0] == "not UTF-8 text"
    assert result.report.label_files_found == 5
    assert result.report.label_lines_accepted == 2  # c: 1, d: 1
    # The images of a label file with an invalid line, or that cannot be read, are left out whole (as
    # Ultralytics does with a corrupt label): the boxes of such a file cannot be trusted to be all there.
    rejected_images = {r.file: r.reason for r in result.report.rejected_images}
    assert rejected_images == {
        "images/a.jpg": "invalid label in labels/a.txt line 2: "
        "expected 5 values (class x_center y_center width height), got 4, and 2 more invalid lines",
        "images/b.jpg": "unreadable label file labels/b.txt: not UTF-8 text",
    }
    assert all(r.line == 0 for r in result.report.rejected_images)
    assert {i.image_id for i in result.content.images} == {"c", "d"}
    assert sorted(p.name for p in result.staging.rglob("*.*") if p.name != "data.yaml") == [
        "c.jpg",
        "c.txt",
        "d.jpg",
        "d.txt",
    ]
    assert not (result.staging / "pool").exists()


def test_an_image_with_only_duplicate_boxes_is_kept_without_them(tmp_path: Path) -> None:
    members = labelled(["a", "b"])
    members["labels/a.txt"] = f"{label_line(0)}\n{label_line(0)}\n".encode()
    result = prepare(tmp_path, members)
    assert result.report.rejected_labels == [Rejection("labels/a.txt", 2, "duplicate of line 1")]
    assert result.report.rejected_images == []
    assert result.label("a") == "0 0.500000 0.500000 0.200000 0.200000\n"


def test_images_left_out_for_their_labels_count_towards_the_two_image_minimum(tmp_path: Path) -> None:
    members = labelled(["a", "b"])
    members["labels/b.txt"] = b"0 0.5 0.5 0.2 1.5\n"
    detail = refused(tmp_path, members)
    assert detail.startswith("Only 1 of 2 image(s) are usable")
    assert "images/b.jpg: invalid label in labels/b.txt line 1" in detail


def test_label_with_bom_and_crlf_is_accepted(tmp_path: Path) -> None:
    members = labelled(["a", "b"])
    members["labels/a.txt"] = "\ufeff0 0.5 0.5 0.2 0.2\r\n0 0.1 0.1 0.1 0.1\r\n".encode()
    result = prepare(tmp_path, members)
    assert result.report.rejected_labels == []
    assert result.report.label_lines_accepted == 3


def test_corrupt_images_are_rejected_and_left_out(tmp_path: Path) -> None:
    members = labelled(["good1", "good2", "good3"])
    whole = jpeg_bytes(64, 48, noise_seed=4)
    members["images/truncated.jpg"] = whole[: len(whole) // 2]
    members["labels/truncated.txt"] = b"7 0.5 0.5 2 2\n"  # never read: its image is rejected
    members["images/text.png"] = b"this is not a png"
    members["images/bomb.png"] = png_declaring(100_000, 100_000)
    members["images/empty.jpg"] = b""
    result = prepare(tmp_path, members, classes=["x"])
    rejected = {r.file: r.reason for r in result.report.rejected_images}
    assert set(rejected) == {"images/truncated.jpg", "images/text.png", "images/bomb.png", "images/empty.jpg"}
    assert all(r.line == 0 for r in result.report.rejected_images)
    assert "truncated" in rejected["images/truncated.jpg"]
    assert "not a readable image" in rejected["images/text.png"]
    assert "pixel limit" in rejected["images/bomb.png"]
    assert rejected["images/empty.jpg"] == "empty file"
    assert (result.report.images_found, result.report.images_accepted) == (7, 3)
    assert sorted(i.image_id for i in result.content.images) == ["good1", "good2", "good3"]
    assert result.report.rejected_labels == []
    assert not (result.staging / "pool").exists()
    assert len(list((result.staging / "images").rglob("*.*"))) == 3


def test_junk_is_counted_as_ignored(tmp_path: Path) -> None:
    members = labelled(["a", "b"])
    members.update(
        {
            "__MACOSX/images/._a.jpg": b"\x00\x05\x16\x07 apple double",
            "images/.DS_Store": b"\x00\x00\x00\x01Bud1",
            "README.md": b"# my dataset",
            "images/Thumbs.db": b"x",
        }
    )
    result = prepare(tmp_path, members)
    assert result.report.ignored_files == 4
    assert result.report.images_found == 2 and result.report.rejected_images == []


# -- splits ------------------------------------------------------------------------------------------------


def pre_split_members() -> Members:
    members = labelled(["t1", "t2", "t3"], image_dir="images/train", label_dir="labels/train")
    members.update(labelled(["v1", "v2"], image_dir="images/val", label_dir="labels/val"))
    members.update(labelled(["x1"], image_dir="images/test", label_dir="labels/test"))
    return members


def test_pre_split_is_kept_without_a_split_ratio(tmp_path: Path) -> None:
    result = prepare(tmp_path, pre_split_members())
    assert result.content.split_ratio is None
    assert result.report.layout == "images/ + labels/ (pre-split)"
    assert result.assignment() == [
        ("t1", "train"),
        ("t2", "train"),
        ("t3", "train"),
        ("v1", "val"),
        ("v2", "val"),
        ("x1", "test"),
    ]
    assert result.label("x1") == "0 0.500000 0.500000 0.200000 0.200000\n"


def test_roboflow_pre_split_in_a_wrapper_folder_is_kept(tmp_path: Path) -> None:
    members = labelled(["a", "b"], image_dir="export/train/images", label_dir="export/train/labels")
    members.update(labelled(["c"], image_dir="export/valid/images", label_dir="export/valid/labels"))
    members["export/data.yaml"] = b"names: ['helmet']\n"
    result = prepare(tmp_path, members)
    assert result.content.split_ratio is None
    assert result.content.classes == ["helmet"]
    assert result.assignment() == [("a", "train"), ("b", "train"), ("c", "val")]
    assert result.report.label_lines_accepted == 3


def test_a_split_ratio_overrides_the_zip_split(tmp_path: Path) -> None:
    ratio = SplitRatio(0.5, 0.5)
    result = prepare(tmp_path, pre_split_members(), split_ratio=ratio)
    assert result.content.split_ratio == ratio
    assert result.counts() == {"train": 3, "val": 3}


def test_pre_split_that_lost_its_val_images_is_split_by_ratio(tmp_path: Path) -> None:
    members = pre_split_members()
    members["images/val/v1.jpg"] = b"broken"
    members["images/val/v2.jpg"] = b"broken too"
    result = prepare(tmp_path, members)
    assert result.content.split_ratio == DEFAULT_SPLIT
    assert any("lost all its train or val images" in w for w in result.report.warnings)
    assert result.counts() == {"train": 3, "val": 1}


def test_split_is_deterministic_for_the_same_seed(tmp_path: Path) -> None:
    members = labelled([f"img{i:02d}" for i in range(20)])
    first = prepare(tmp_path, members, name="first")
    second = prepare(tmp_path, members, name="second", workers=1)
    other = prepare(tmp_path, members, name="other", seed="ds_20991231_235959")
    assert first.assignment() == second.assignment()
    assert first.counts() == other.counts() == {"train": 16, "val": 4}
    assert first.assignment() != other.assignment()


def test_same_file_name_in_two_splits_gets_distinct_image_ids(tmp_path: Path) -> None:
    members = {
        "images/train/a.jpg": jpeg_bytes(40, 30),
        "labels/train/a.txt": f"{label_line(0)}\n".encode(),
        "images/val/a.jpg": jpeg_bytes(50, 30),
        "labels/val/a.txt": f"{label_line(1, 0.3, 0.3, 0.1, 0.1)}\n".encode(),
        "images/val/A_.png": png_bytes(20, 20),  # id "A" clashes with "a" (ids are unique ignoring case)
        "images/train/b.jpg": jpeg_bytes(60, 30),
    }
    result = prepare(tmp_path, members, classes=["x", "y"])
    ids = {(i.split, i.relpath): (i.image_id, i.width) for i in result.content.images}
    assert ids == {
        ("train", "images/train/a.jpg"): ("a", 40),
        ("train", "images/train/b.jpg"): ("b", 60),
        ("val", "images/val/A_2.png"): ("A_2", 20),
        ("val", "images/val/a_3.jpg"): ("a_3", 50),
    }
    assert len({i.image_id.lower() for i in result.content.images}) == 4
    # Each label followed its own image.
    assert result.label("a") == "0 0.500000 0.500000 0.200000 0.200000\n"
    assert result.label("a_3") == "1 0.300000 0.300000 0.100000 0.100000\n"
    assert not (result.staging / "labels" / "val" / "A_2.txt").exists()
    assert sorted(p.name for p in (result.staging / "labels").rglob("*.txt")) == ["a.txt", "a_3.txt"]


def test_image_ids_are_made_safe(tmp_path: Path) -> None:
    members = {
        "images/my photo (1).JPG": jpeg_bytes(),
        "images/猫.jpg": jpeg_bytes(),
        "images/犬.jpg": jpeg_bytes(),
        "images/-.jpeg": jpeg_bytes(),
    }
    result = prepare(tmp_path, members)
    assert sorted(i.relpath.split("/", 2)[2] for i in result.content.images) == [
        "image.jpeg",
        "image_2.jpg",
        "image_3.jpg",
        "my_photo_1.jpg",
    ]
    for image in result.content.images:
        assert (result.staging / image.relpath).is_file()


# -- refusals ---------------------------------------------------------------------------------------------


def test_fewer_than_two_usable_images_is_refused(tmp_path: Path) -> None:
    members = labelled(["only"])
    members["images/broken.jpg"] = b"not a jpeg"
    detail = refused(tmp_path, members)
    assert detail.startswith("Only 1 of 2 image(s) are usable; a dataset needs at least 2")
    assert "images/broken.jpg: not a readable image" in detail


def test_a_single_image_is_refused(tmp_path: Path) -> None:
    assert "Only 1 of 1 image(s)" in refused(tmp_path, labelled(["one"]))


def test_a_zip_without_images_is_refused(tmp_path: Path) -> None:
    members = {"labels/a.txt": b"0 0.5 0.5 0.1 0.1\n", "data.yaml": b"names: [a]\n"}
    assert "contains no images" in refused(tmp_path, members)


def test_an_unsafe_zip_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    members = labelled(["a", "b"])
    members["../evil.txt"] = b"pwned"
    assert "Unsafe path" in refused(tmp_path, members)
    assert list((tmp_path / "run" / ".staging-1").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_zip_limits_are_applied(tmp_path: Path) -> None:
    detail = refused(tmp_path, labelled(["a", "b", "c"]), zip_limits=ZipLimits(max_entries=5))
    assert "6 entries" in detail


def test_split_ratio_that_cannot_give_train_and_val_an_image(tmp_path: Path) -> None:
    detail = refused(tmp_path, labelled(["a", "b"]), split_ratio=SplitRatio(0.1, 0.9))
    assert "train and val each need an image" in detail


def test_images_differing_only_in_case_keep_their_own_labels(tmp_path: Path) -> None:
    members = {
        "images/A.jpg": jpeg_bytes(40, 30),
        "labels/A.txt": f"{label_line(0)}\n".encode(),
        "images/a.jpg": jpeg_bytes(50, 30),
        "labels/a.txt": f"{label_line(1, 0.3, 0.3, 0.1, 0.1)}\n".encode(),
    }
    result = prepare(tmp_path, members, classes=["x", "y"], split_ratio=SplitRatio(0.5, 0.5))
    by_width = {i.width: i.image_id for i in result.content.images}
    assert result.label(by_width[40]) == "0 0.500000 0.500000 0.200000 0.200000\n"
    assert result.label(by_width[50]) == "1 0.300000 0.300000 0.100000 0.100000\n"
