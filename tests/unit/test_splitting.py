"""services.dataset.domain.splitting: ratio validation and the deterministic train/val/test split."""

from __future__ import annotations

from collections import Counter

import pytest

from services.common.errors import InvalidArgument
from services.dataset.domain.splitting import DEFAULT_SPLIT, SplitRatio, split_keys

KEYS = [f"images/img_{index:03d}.jpg" for index in range(100)]


@pytest.mark.parametrize("ratio", [SplitRatio(), SplitRatio(0.7, 0.2, 0.1), SplitRatio(0.5, 0.5), SplitRatio(0.1, 0.9)])
def test_valid_ratios(ratio: SplitRatio) -> None:
    assert ratio.validate() is ratio


def test_float_noise_in_the_sum_is_tolerated() -> None:
    SplitRatio(0.7, 0.2, 0.1).validate()  # 0.7 + 0.2 + 0.1 == 0.9999999999999999
    SplitRatio(1 / 3, 1 / 3, 1 / 3).validate()


@pytest.mark.parametrize(
    ("ratio", "message"),
    [
        (SplitRatio(1.5, -0.5), "split_ratio.train must be between 0 and 1 (got 1.5)"),
        (SplitRatio(0.8, 0.2, -0.0001), "split_ratio.test must be between 0 and 1"),
        (SplitRatio(float("nan"), 0.2), "split_ratio.train must be between 0 and 1"),
        (SplitRatio(0.8, float("inf")), "split_ratio.val must be between 0 and 1"),
        (SplitRatio(1.0, 0.0), "must both be greater than 0"),
        (SplitRatio(0.0, 1.0), "must both be greater than 0"),
        (SplitRatio(0.8, 0.3), "must add up to 1 (got train 0.8 + val 0.3 = 1.1)"),
        (SplitRatio(0.5, 0.2, 0.2), "= 0.9)"),
    ],
)
def test_invalid_ratios(ratio: SplitRatio, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        ratio.validate()
    assert message in caught.value.detail


def test_sum_message_names_test_only_when_present() -> None:
    with pytest.raises(InvalidArgument) as caught:
        SplitRatio(0.5, 0.2, 0.2).validate()
    assert "+ test 0.2" in caught.value.detail
    with pytest.raises(InvalidArgument) as caught:
        SplitRatio(0.5, 0.2).validate()
    assert "test" not in caught.value.detail


def test_as_dict_and_default() -> None:
    assert DEFAULT_SPLIT.as_dict() == {"train": 0.8, "val": 0.2, "test": 0.0}


@pytest.mark.parametrize(
    ("ratio", "counts"),
    [
        (SplitRatio(), {"train": 80, "val": 20}),
        (SplitRatio(0.7, 0.2, 0.1), {"train": 70, "val": 20, "test": 10}),
        (SplitRatio(0.5, 0.5), {"train": 50, "val": 50}),
    ],
)
def test_split_counts_follow_the_ratio(ratio: SplitRatio, counts: dict[str, int]) -> None:
    assignment = split_keys(KEYS, ratio, seed="ds_1")
    assert set(assignment) == set(KEYS)
    assert Counter(assignment.values()) == counts


def test_same_keys_ratio_and_seed_give_the_same_split_whatever_the_input_order() -> None:
    first = split_keys(KEYS, DEFAULT_SPLIT, seed="ds_20240101_000000")
    second = split_keys(list(reversed(KEYS)), DEFAULT_SPLIT, seed="ds_20240101_000000")
    assert first == second


def test_different_seeds_give_different_splits() -> None:
    assert split_keys(KEYS, DEFAULT_SPLIT, seed="a") != split_keys(KEYS, DEFAULT_SPLIT, seed="b")


def test_split_is_shuffled_not_by_name() -> None:
    val = sorted(key for key, split in split_keys(KEYS, DEFAULT_SPLIT, seed="x").items() if split == "val")
    assert val != KEYS[:20] and val != KEYS[-20:]


def test_val_gets_at_least_one_image() -> None:
    assignment = split_keys(["a", "b"], SplitRatio(0.99, 0.01), seed="s")
    assert sorted(assignment.values()) == ["train", "val"]


def test_small_test_share_may_round_to_nothing() -> None:
    assignment = split_keys(["a", "b", "c"], SplitRatio(0.8, 0.1, 0.1), seed="s")
    assert Counter(assignment.values()) == {"train": 2, "val": 1}


@pytest.mark.parametrize(
    ("keys", "ratio"),
    [
        (["only"], DEFAULT_SPLIT),
        ([], DEFAULT_SPLIT),
        (["a", "b"], SplitRatio(0.1, 0.9)),
        (["a", "b", "c", "d"], SplitRatio(0.2, 0.4, 0.4)),
    ],
)
def test_too_few_keys_for_train_and_val(keys: list[str], ratio: SplitRatio) -> None:
    with pytest.raises(InvalidArgument, match="train and val each need an image"):
        split_keys(keys, ratio, seed="s")
