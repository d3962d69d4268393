"""services.segmentation.domain.sam: the real MobileSAM (vit_t) code paths on randomly initialised weights.

Random weights make the masks meaningless, so these tests check shapes and invariants (boxes inside the image,
masks the size of their box and tight around it, one region per box prompt), the embedding cache, and checkpoint
validation. Images are small (128x96), but SAM encodes every image as a 1024 px square: each new image costs
about 2 s of CPU, so the tests reuse images where they can.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.errors import InvalidArgument
from services.common.geometry import Box
from services.segmentation.domain.regions import Region
from services.segmentation.domain.sam import SamSegmenter
from synthetic.sam_checkpoints import write_random_checkpoint

WIDTH, HEIGHT = 128, 96


def screen(seed: int) -> np.ndarray:
    """A small UI-like RGB image: two flat rectangles on a light background, with a little seeded noise."""
    rng = np.random.default_rng(seed)
    image = np.full((HEIGHT, WIDTH, 3), 235, np.uint8)
    image[10:40, 12:70] = (30, 100, 220)
    image[55:85, 80:120] = (220, 40, 40)
    return (image - rng.integers(0, 6, image.shape)).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint("vit_t", tmp_path_factory.mktemp("sam") / "vit_t.pt")


@pytest.fixture(scope="module")
def segmenter(checkpoint: Path) -> SamSegmenter:
    # Random weights score every automatic mask low: zero thresholds let SAM's filtering keep some.
    return SamSegmenter("vit_t", checkpoint, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0)


@contextmanager
def counting_encoder_runs(segmenter: SamSegmenter) -> Iterator[list[int]]:
    """Counts image-encoder forward passes (the expensive set_image step) while the block runs."""
    runs = [0]

    def count(*_: object) -> None:
        runs[0] += 1

    hook = segmenter.model.image_encoder.register_forward_hook(count)
    try:
        yield runs
    finally:
        hook.remove()


def assert_tight_region(region: Region, within: Box) -> None:
    assert region.source == "sam"
    assert isinstance(region.score, float)
    assert within.contains(region.box) and region.box.area > 0
    assert region.mask is not None and region.mask.dtype == bool
    assert region.mask.shape == (region.box.height, region.box.width)
    mask = region.mask
    assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def test_point_prompt_gives_the_best_mask_as_a_tight_region(segmenter: SamSegmenter) -> None:
    region = segmenter.at_points(screen(0), [(40.0, 25.0)], [1])
    assert region is not None
    assert_tight_region(region, Box(0, 0, WIDTH, HEIGHT))
    with_background_point = segmenter.at_points(screen(0), [(40.0, 25.0), (100.0, 70.0)], [1, 0])
    assert with_background_point is None or with_background_point.mask is not None


def test_box_prompts_give_one_region_per_box_inside_it(segmenter: SamSegmenter) -> None:
    image = screen(0)
    button, card = Box(10, 8, 72, 42), Box(78, 53, 122, 87)
    [single] = segmenter.in_boxes(image, [button])
    several = segmenter.in_boxes(image, [button, card, Box(120, 90, 200, 200)], points=[(40, 25)], labels=[1])
    assert len(several) == 3
    for region, prompt in [
        (single, button),
        (several[0], button),
        (several[1], card),
        (several[2], Box(120, 90, 128, 96)),
    ]:
        if region.mask is None:  # nothing found: the prompt box itself
            assert (region.box, region.score) == (prompt, 0.0)
        else:
            assert_tight_region(region, prompt)
    assert segmenter.in_boxes(image, []) == []


def test_embeddings_of_the_last_two_images_are_reused(segmenter: SamSegmenter) -> None:
    first, second, third = screen(1), screen(2), screen(3)
    with counting_encoder_runs(segmenter) as runs:
        segmenter.at_points(first, [(40, 25)], [1])
        segmenter.in_boxes(first, [Box(10, 8, 72, 42)])
        assert runs[0] == 1
        segmenter.at_points(second, [(40, 25)], [1])
        segmenter.at_points(first.copy(), [(90, 60)], [1])  # same pixels, another array
        assert runs[0] == 2
        segmenter.at_points(third, [(40, 25)], [1])  # evicts `second`, the least recently used
        segmenter.at_points(first, [(40, 25)], [1])
        assert runs[0] == 3


def test_bad_prompts_are_invalid_arguments(segmenter: SamSegmenter) -> None:
    image = screen(0)
    for points, labels in [
        ([], []),
        ([(10, 10)], [1, 0]),
        ([(10, 10)], [2]),
        ([(10, 200)], [1]),
        ([(10, 10, 10, 10)], [1]),
    ]:
        with pytest.raises(InvalidArgument):
            segmenter.at_points(image, points, labels)
    with pytest.raises(InvalidArgument, match="no area inside"):
        segmenter.in_boxes(image, [Box(10, 10, 50, 50), Box(200, 10, 250, 50)])
    with pytest.raises(InvalidArgument):
        segmenter.in_boxes(image, [Box(10, 10, 50, 50)], points=[(20, 20)])
    with pytest.raises(ValueError, match="RGB uint8"):
        segmenter.at_points(image[..., 0], [(10, 10)], [1])


def test_automatic_masks_are_regions_and_share_the_embedding_with_prompts(segmenter: SamSegmenter) -> None:
    image = screen(4)
    with counting_encoder_runs(segmenter) as runs:
        regions = segmenter.regions(image)
        segmenter.at_points(image, [(40, 25)], [1])
    assert runs[0] == 1
    assert regions
    for region in regions:
        assert_tight_region(region, Box(0, 0, WIDTH, HEIGHT))


def test_random_checkpoints_are_reproducible_and_leave_the_global_rng_alone(tmp_path: Path, checkpoint: Path) -> None:
    state_before = torch.random.get_rng_state()
    first = torch.load(checkpoint, weights_only=True)  # seed 0
    second = torch.load(write_random_checkpoint("vit_t", tmp_path / "again.pt", seed=0), weights_only=True)
    assert torch.equal(torch.random.get_rng_state(), state_before)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_unusable_checkpoints_are_value_errors(tmp_path: Path, checkpoint: Path) -> None:
    not_torch = tmp_path / "notes.pt"
    not_torch.write_bytes(b"not a checkpoint")
    a_list = tmp_path / "list.pt"
    torch.save([1, 2, 3], a_list)
    truncated = tmp_path / "truncated.pt"
    state = torch.load(checkpoint, weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, truncated)
    reshaped = tmp_path / "reshaped.pt"
    state = torch.load(checkpoint, weights_only=True)
    name = next(name for name, tensor in state.items() if tensor.ndim == 2)
    state[name] = torch.zeros(3, 3)
    torch.save(state, reshaped)
    for path, problem in [
        (tmp_path / "missing.pt", "does not exist"),
        (not_torch, "not a PyTorch state dict"),
        (a_list, "holds a list"),
        (truncated, "1 missing keys"),
        (reshaped, "does not fit"),
    ]:
        with pytest.raises(ValueError, match=problem) as error:
            SamSegmenter("vit_t", path)
        assert str(path) in str(error.value) and "vit_t" in str(error.value)
    with pytest.raises(ValueError, match="unknown SAM model type"):
        SamSegmenter("vit_x", checkpoint)


@pytest.mark.slow
def test_vit_b_loads_its_own_state_dict_and_rejects_mobile_sam(tmp_path: Path, checkpoint: Path) -> None:
    """vit_b comes from segment_anything: 94 M parameters, a 375 MB checkpoint, about 10 s here."""
    vit_b = write_random_checkpoint("vit_b", tmp_path / "vit_b.pt")
    assert SamSegmenter("vit_b", vit_b).model_type == "vit_b"
    with pytest.raises(ValueError, match=r"vit_b.*does not fit"):
        SamSegmenter("vit_b", checkpoint)
    with pytest.raises(ValueError, match=r"vit_t.*does not fit"):
        SamSegmenter("vit_t", vit_b)
