"""services.inference.domain.samples: which entries are samples, their order, and the index limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.inference.domain.samples import SampleSet, natural_key


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")
    return path


def test_samples_are_entries_in_natural_order_ignoring_hidden_and_unsupported(tmp_path: Path) -> None:
    for name in ("10.jpg", "2.png", "1.MP4", "b.webp", "A.bmp", ".hidden.jpg", "notes.txt", "model.onnx"):
        touch(tmp_path / name)
    touch(tmp_path / ".cache" / "3.jpg")
    samples = SampleSet(tmp_path)
    names = [samples.get(index).name for index in range(1, samples.count() + 1)]
    assert names == ["1.MP4", "2.png", "10.jpg", "A.bmp", "b.webp"]
    assert [samples.get(index).index for index in range(1, 6)] == [1, 2, 3, 4, 5]


def test_a_file_sample_is_one_image_or_one_video(tmp_path: Path) -> None:
    image, video = touch(tmp_path / "a.jpeg"), touch(tmp_path / "b.mkv")
    samples = SampleSet(tmp_path)
    assert (samples.get(1).images, samples.get(1).videos) == ((image,), ())
    assert (samples.get(2).images, samples.get(2).videos) == ((), (video,))


def test_a_folder_sample_holds_its_own_images_and_videos_not_its_subfolders(tmp_path: Path) -> None:
    folder = tmp_path / "street"
    frames = [touch(folder / name) for name in ("frame_10.jpg", "frame_9.png", "frame_100.webp")]
    clip = touch(folder / "clip.mov")
    touch(folder / ".thumb.jpg")
    touch(folder / "labels.txt")
    touch(folder / "nested" / "deep.jpg")  # not searched
    touch(tmp_path / "empty" / "readme.md")  # no image or video: not a sample
    touch(tmp_path / "only-nested" / "inner" / "x.jpg")  # nothing directly inside: not a sample
    sample = SampleSet(tmp_path).get(1)
    assert sample.name == "street"
    assert sample.images == (frames[1], frames[0], frames[2])
    assert sample.videos == (clip,)
    assert SampleSet(tmp_path).count() == 1


def test_indexes_below_one_are_invalid(tmp_path: Path) -> None:
    touch(tmp_path / "1.jpg")
    for index in (0, -1):
        with pytest.raises(InvalidArgument, match="index must be an integer >= 1"):
            SampleSet(tmp_path).get(index)


def test_an_index_beyond_the_set_is_not_found_and_says_how_many_there_are(tmp_path: Path) -> None:
    touch(tmp_path / "1.jpg")
    touch(tmp_path / "2.jpg")
    with pytest.raises(NotFound) as caught:
        SampleSet(tmp_path).get(3)
    assert caught.value.detail == "No sample 3: the sample set has 2 samples; use an index from 1 to 2"


def test_a_missing_directory_is_an_empty_set_and_says_how_to_configure_one(tmp_path: Path) -> None:
    samples = SampleSet(tmp_path / "absent")
    assert samples.count() == 0
    with pytest.raises(NotFound, match="VM_INFERENCE_SAMPLES_DIR") as caught:
        samples.get(1)
    # Where the directory is would be the server's business: the client learns what to ask for.
    assert str(tmp_path) not in caught.value.detail and "/" not in caught.value.detail


def test_changes_to_the_directory_count_at_once(tmp_path: Path) -> None:
    samples = SampleSet(tmp_path)
    assert samples.count() == 0
    touch(tmp_path / "2.jpg")
    touch(tmp_path / "1.jpg")
    assert samples.count() == 2
    assert samples.get(1).name == "1.jpg"


def test_natural_key_orders_numbers_by_value_and_breaks_ties_by_name() -> None:
    names = ["img12.jpg", "img2.jpg", "img01.jpg", "IMG1.jpg"]
    assert sorted(names, key=natural_key) == ["IMG1.jpg", "img01.jpg", "img2.jpg", "img12.jpg"]
