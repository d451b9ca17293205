"""What TF Serving does with a ``Predict`` request to an exported model, without the server.

``tensorflow_model_server`` cannot be installed everywhere (not from PyPI, nor on these
machines). These functions take the server's steps on a model base path
(``<export_dir>/<run>/classifier``), so that a client's request can be checked offline
against the version a server would answer with, with the same protos:

- the version served is the highest numeric folder (the server's default ``latest``
  policy; names that are not numbers, like the exporter's ``.tmp-*``, are skipped);
- the request names the model, optionally a version, and a signature
  (``serving_default`` when empty); its tensors are fed by input name, and the response
  carries every output (or those of ``output_filter``) and the version that answered;
- a bad request raises ``tf.errors.InvalidArgumentError`` (``NotFoundError`` for a model,
  version or signature that is not there) with the message the client would see, never an
  answer. Shape, NaN, empty-batch and range errors come from the model's own checks
  (``export.py``), as they do on the server.

Needs the ``tensorflow-serving-api`` package (the protos), imported lazily.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow as tf


def latest_version(model_base_path: str) -> int:
    """The version a server would load: the highest number, compared as numbers (10 > 9)."""
    versions = [int(name) for name in os.listdir(model_base_path)
                if name.isdigit() and os.path.isdir(os.path.join(model_base_path, name))]
    if not versions:
        raise tf.errors.NotFoundError(None, None, f"no numeric version folder under {model_base_path}")
    return max(versions)


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One loaded version, as a server holds it under a model name."""

    name: str
    version: int
    saved_model: Any


def load_latest(model_base_path: str, name: str = "dgm") -> ServedModel:
    version = latest_version(model_base_path)
    return ServedModel(name, version, tf.saved_model.load(os.path.join(model_base_path, str(version))))


def _fail(message: str):
    raise tf.errors.InvalidArgumentError(None, None, message)


def predict(model: ServedModel, request):
    """Answers a ``predict_pb2.PredictRequest`` with a ``predict_pb2.PredictResponse``."""
    from tensorflow_serving.apis import predict_pb2

    spec = request.model_spec
    if spec.name != model.name:
        raise tf.errors.NotFoundError(None, None, f"Servable not found for request: model {spec.name!r}; "
                                                  f"this server holds {model.name!r}")
    if spec.HasField("version") and spec.version.value != model.version:
        raise tf.errors.NotFoundError(None, None, f"Servable not found for request: {model.name!r} version "
                                                  f"{spec.version.value}; the version served is {model.version}")
    signature_name = spec.signature_name or "serving_default"
    signatures = model.saved_model.signatures
    if signature_name not in signatures:
        raise tf.errors.NotFoundError(None, None, f"signature {signature_name!r} not found; the signatures are "
                                                  f"{sorted(signatures)}")
    function = signatures[signature_name]
    expected = set(function.structured_input_signature[1])
    if set(request.inputs) != expected:
        _fail(f"inputs {sorted(request.inputs)} do not match signature {signature_name!r}, which takes "
              f"{sorted(expected)}")
    outputs = function(**{key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()})
    wanted = list(request.output_filter) or sorted(outputs)
    unknown = set(wanted) - set(outputs)
    if unknown:
        _fail(f"output_filter {sorted(unknown)} not in signature {signature_name!r}, whose outputs are "
              f"{sorted(outputs)}")

    response = predict_pb2.PredictResponse()
    response.model_spec.name = model.name
    response.model_spec.version.value = model.version
    response.model_spec.signature_name = signature_name
    for key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
    return response
