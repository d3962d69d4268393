"""Train/val/test split ratios and a deterministic split."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class SplitRatio:
    train: float = 0.8
    val: float = 0.2
    test: float = 0.0

    def validate(self) -> SplitRatio:
        values = {"train": self.train, "val": self.val, "test": self.test}
        for name, value in values.items():
            if not math.isfinite(value) or not 0 <= value <= 1:
                raise InvalidArgument(f"split_ratio.{name} must be between 0 and 1 (got {value})")
        if self.train <= 0 or self.val <= 0:
            raise InvalidArgument("split_ratio.train and split_ratio.val must both be greater than 0")
        total = self.train + self.val + self.test
        if abs(total - 1) > 1e-6:
            raise InvalidArgument(
                f"split_ratio must add up to 1 (got train {self.train:g} + val {self.val:g}"
                + (f" + test {self.test:g}" if self.test else "")
                + f" = {total:g})"
            )
        return self

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


DEFAULT_SPLIT = SplitRatio()


def split_keys(keys: list[str], ratio: SplitRatio, seed: str) -> dict[str, str]:
    """Assign each key to train/val/test. Same keys, ratio and seed give the same split every time."""
    ordered = sorted(keys)
    random.Random(seed).shuffle(ordered)
    total = len(ordered)
    val_count = max(1, round(total * ratio.val))
    test_count = round(total * ratio.test)
    train_count = total - val_count - test_count
    if train_count < 1:
        raise InvalidArgument(
            f"{total} valid image(s) cannot be split {ratio.as_dict()}: train and val each need an image"
        )
    assignment = {key: "val" for key in ordered[:val_count]}
    assignment.update({key: "test" for key in ordered[val_count : val_count + test_count]})
    assignment.update({key: "train" for key in ordered[val_count + test_count :]})
    return assignment
