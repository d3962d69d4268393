"""services.dataset.domain.data_yaml: the data.yaml we write and class names read from others'."""

from __future__ import annotations

import pytest
import yaml

from services.dataset.domain.data_yaml import names_from_lines, names_from_yaml, render_data_yaml


def test_render_data_yaml_loads_back() -> None:
    text = render_data_yaml(["cat", "dog", "猫"], ["train", "val", "test"], "/data/datasets/ds_1/v1")
    assert text.startswith("# Written by VisionMesh.\n")
    assert "猫" in text  # written as UTF-8, not escaped
    assert yaml.safe_load(text) == {
        "path": "/data/datasets/ds_1/v1",
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "nc": 3,
        "names": {0: "cat", 1: "dog", 2: "猫"},
    }


def test_render_data_yaml_without_path_or_test_split() -> None:
    config = yaml.safe_load(render_data_yaml(["a"], ["val", "train"], None))
    assert config == {"train": "images/train", "val": "images/val", "nc": 1, "names": {0: "a"}}
    assert list(config) == ["train", "val", "nc", "names"]


@pytest.mark.parametrize("name", ["yes", "null", "1", "a: b", "- x", "#hash", "'quoted'"])
def test_class_names_that_look_like_yaml_stay_strings(name: str) -> None:
    config = yaml.safe_load(render_data_yaml([name], ["train", "val"], None))
    assert config["names"] == {0: name}
    assert names_from_yaml(render_data_yaml([name, "other"], ["train"], None)) == [name, "other"]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("names: [cat, dog]\n", ["cat", "dog"]),
        ("nc: 2\nnames:\n  - cat\n  - dog\n", ["cat", "dog"]),
        ("names:\n  1: dog\n  0: cat\n", ["cat", "dog"]),
        ("names:\n  '0': cat\n  '1': dog\n", ["cat", "dog"]),
        ("names: [1, 2.5, true]\n", ["1", "2.5", "True"]),
    ],
)
def test_names_from_yaml(text: str, names: list[str]) -> None:
    assert names_from_yaml(text) == names


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("nc: 2\n", "no `names` list"),
        ("names: []\n", "no `names` list"),
        ("names: cat\n", "no `names` list"),
        ("- just\n- a list\n", "no `names` list"),
        ("", "no `names` list"),
        ("names:\n  0: cat\n  2: dog\n", "without gaps"),
        ("names:\n  1: cat\n", "without gaps"),
        ("names:\n  first: cat\n", "must be class ids"),
    ],
)
def test_names_from_yaml_refuses(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        names_from_yaml(text)


def test_names_from_yaml_refuses_invalid_yaml() -> None:
    with pytest.raises(yaml.YAMLError):
        names_from_yaml("names: [cat, dog\n")


def test_names_from_lines() -> None:
    assert names_from_lines("cat\r\n\n  dog  \ntraffic light\n") == ["cat", "dog", "traffic light"]
    with pytest.raises(ValueError, match="no class names"):
        names_from_lines(" \n\n")
