"""Triton Python-backend model that runs the model.onnx beside it with ONNX Runtime on the CPU.

Not imported by the platform: repository.py copies this file into each model as <model>/1/model.py, and
Triton's Python-backend stub runs it (triton_python_backend_utils exists only there). The dynamic batcher
hands execute() several requests at once; they run as one batch and the outputs are split back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        # model_repository is this model's own directory; the version is a subdirectory of it.
        onnx_file = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_parameter(config, "intra_op_thread_count")
        options.inter_op_num_threads = _int_parameter(config, "inter_op_thread_count")
        # Parallelism comes from Triton's instances; inside one, nodes run one after another.
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self._inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self._outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        self._batched = config.get("max_batch_size", 0) > 0
        missing = {name for name, _ in self._inputs} - {tensor.name for tensor in self._session.get_inputs()}
        if missing:
            raise ValueError(f"config.pbtxt declares inputs {sorted(missing)} that {onnx_file.name} does not have")

    def execute(self, requests: list[Any]) -> list[Any]:
        if self._batched and len(requests) > 1:
            try:
                return self._infer(requests)
            except Exception:  # noqa: BLE001 - one request spoiled the batch: each runs alone below
                pass
        return [self._infer_alone(request) for request in requests]

    def finalize(self) -> None:
        del self._session

    def _infer_alone(self, request: Any) -> Any:
        """One request's response; an error becomes that request's error response, never a crash."""
        try:
            return self._infer([request])[0]
        except Exception as error:  # noqa: BLE001 - reported to the client that sent the request
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(error).__name__}: {error}"))

    def _infer(self, requests: list[Any]) -> list[Any]:
        """One session.run for all requests: inputs joined along the batch axis, outputs split back."""
        arrays = {
            name: [
                pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(dtype, copy=False)
                for request in requests
            ]
            for name, dtype in self._inputs
        }
        feed = {name: parts[0] if len(parts) == 1 else np.concatenate(parts) for name, parts in arrays.items()}
        results = self._session.run([name for name, _ in self._outputs], feed)
        first_input = next(iter(arrays.values()))
        boundaries = np.cumsum([part.shape[0] for part in first_input])[:-1]
        per_request = [np.split(result, boundaries) for result in results]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(parts[index]).astype(dtype, copy=False))
                    for (name, dtype), parts in zip(self._outputs, per_request, strict=True)
                ]
            )
            for index in range(len(requests))
        ]


def _int_parameter(config: dict[str, Any], key: str) -> int:
    return int(config.get("parameters", {}).get(key, {}).get("string_value", "0") or 0)
