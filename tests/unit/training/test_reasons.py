"""Failure reasons as users read them: no traceback, no server paths, no terminal decoration."""

from __future__ import annotations

from services.common.errors import without_server_paths
from services.training.domain.reasons import fit_for_users, last_exception

# What the ONNX exporter's child printed for a file that is not a checkpoint (Ultralytics 8.4, shortened).
_EXPORTER_OUTPUT = """Traceback (most recent call last):
  File "/srv/vm/.venv/lib/python3.11/site-packages/ultralytics/nn/tasks.py", line 1934, in torch_safe_load
    ckpt = _load()
_pickle.UnpicklingError: Weights only load failed.
Check the documentation of torch.load to learn more.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "<string>", line 5, in <module>
  File "/srv/vm/.venv/lib/python3.11/site-packages/ultralytics/nn/tasks.py", line 1947, in torch_safe_load
    raise TypeError(
TypeError: ERROR \u274c\ufe0f /srv/vm/data/models/.staging-onnx-yx6x2v3e/model.pt references types outside the \
supported Ultralytics checkpoint format."""


def test_the_exception_a_process_died_of_without_its_traceback_or_paths() -> None:
    reason = last_exception(_EXPORTER_OUTPUT)
    assert reason == "TypeError: model.pt references types outside the supported Ultralytics checkpoint format."


def test_no_exception_in_the_output() -> None:
    assert last_exception("Killed\n") is None
    assert last_exception("") is None


def test_server_paths_are_reduced_to_their_last_component() -> None:
    text = "cannot open '/srv/vm/data/training/jobs/job_1/train/weights/last.pt' (see /tmp/x.log)"
    assert without_server_paths(text) == "cannot open 'last.pt' (see x.log)"
    for unchanged in ("epochs must be 1/2 of 10", "images/train/a.jpg and labels/train/a.txt"):
        assert without_server_paths(unchanged) == unchanged


def test_messages_lose_colours_emojis_and_ultralytics_settings_hints() -> None:
    message = (
        "\x1b[31mDataset images not found \u274c\x1b[0m, missing path 'x'\nNote dataset download directory is '/d'"
    )
    assert fit_for_users(message) == "Dataset images not found , missing path 'x'"
