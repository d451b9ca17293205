"""Serving the exported classifier as TF Serving would: the version folders a server lists,
the signatures through ``saved_model_cli`` (which runs them in a TF1 session, as the server
does), PredictRequests from the ``tensorflow-serving-api`` protos (also over a real gRPC
channel, with the README's client code), and bad requests failing with a clear error."""

import hashlib
import os
import re
import subprocess
import sys
from concurrent import futures

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dgm_keras import data, expansion, export, serving

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


@pytest.fixture(scope="module")
def mnist_digits(mnist_dir):
    """Eight real MNIST test digits: raw uint8 28x28 (what a client has) and the pipeline's float32."""
    import tensorflow_datasets as tfds

    ds = tfds.load("mnist", split="test[:8]", data_dir=mnist_dir, download=False, as_supervised=True, batch_size=-1)
    raw, _ = tfds.as_numpy(ds)
    return raw, data.preprocess_images(raw).numpy()


@pytest.fixture(scope="module")
def served(exported_classifier):
    return serving.load_latest(exported_classifier.model_dir)


def _live(exported_classifier, images):
    probs = tf.nn.softmax(exported_classifier.model.classify(images)).numpy()
    return probs, probs.argmax(-1)


def _request(images, signature="serving_default", name="dgm", version=None, input_name="images", output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(images))
    request.output_filter.extend(output_filter)
    return request


def _hashes(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_saved_model_cli_shows_the_signatures_and_runs_them(exported_classifier, mnist_digits, tmp_path):
    _, images = mnist_digits
    np.save(tmp_path / "digits.npy", images)
    np.save(tmp_path / "nan.npy", np.full((2, 32, 32, 1), np.nan, np.float32))
    run = [SAVED_MODEL_CLI, "run", "--dir", exported_classifier.path, "--tag_set", "serve",
           "--signature_def", "serving_default"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in (
        [SAVED_MODEL_CLI, "show", "--dir", exported_classifier.path, "--all"],
        run + ["--inputs", f"images={tmp_path / 'digits.npy'}", "--outdir", str(tmp_path / "out")],
        run + ["--inputs", f"images={tmp_path / 'nan.npy'}", "--outdir", str(tmp_path / "nan_out")])]
    (show, _), (_, run_err), (_, nan_err) = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs[:2]] == [0, 0], run_err[-2000:]

    def signature(name):
        return show.split(f"signature_def['{name}']:")[1].split("Method name is: ")[:2]

    for name, dtype, shape in (("serving_default", "DT_FLOAT", "(-1, 32, 32, 1)"),
                               ("serving_uint8", "DT_UINT8", "(-1, -1, -1, 1)")):
        body, method = signature(name)
        assert method.startswith("tensorflow/serving/predict")
        assert re.findall(r"inputs\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([-\d, ]+\))", body) == [
            ("images", dtype, shape)]
        assert re.findall(r"outputs\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([-\d, ]+\))", body) == [
            ("class_names", "DT_STRING", "(-1)"), ("classes", "DT_INT64", "(-1)"),
            ("probabilities", "DT_FLOAT", "(-1, 4)")]

    probs, classes = _live(exported_classifier, images)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "classes.npy"), classes)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "probabilities.npy"), probs, atol=1e-5)
    names = np.load(tmp_path / "out" / "class_names.npy", allow_pickle=True)
    assert [n.decode() for n in names] == [f"digit{c}" for c in classes]
    # In a TF1 session too (how the server runs it), the model's own check stops NaN pixels.
    assert procs[2].returncode != 0 and "images: NaN or Inf pixels" in nan_err
    assert not os.path.exists(tmp_path / "nan_out" / "classes.npy")


def test_predict_request_answered_like_the_live_model(exported_classifier, served, mnist_digits):
    raw, images = mnist_digits
    probs, classes = _live(exported_classifier, images)
    response = serving.predict(served, predict_pb2.PredictRequest.FromString(
        _request(images).SerializeToString()))  # through the wire format
    response = predict_pb2.PredictResponse.FromString(response.SerializeToString())
    assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
        "dgm", 2, "serving_default")
    assert sorted(response.outputs) == ["class_names", "classes", "probabilities"]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), probs, atol=1e-5)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["classes"]), classes)
    assert [n.decode() for n in tf.make_ndarray(response.outputs["class_names"])] == [f"digit{c}" for c in classes]

    # Raw 28x28 uint8 digits to serving_uint8 give what the pipeline's images give; output_filter is kept.
    response = serving.predict(served, _request(raw, "serving_uint8", output_filter=["classes"]))
    assert list(response.outputs) == ["classes"]
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["classes"]), classes)


class _Server(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A stand-in for tensorflow_model_server's gRPC PredictionService (Predict only)."""

    def __init__(self, model):
        self.model = model

    def Predict(self, request, context):
        try:
            return serving.predict(self.model, request)
        except tf.errors.OpError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT if isinstance(e, tf.errors.InvalidArgumentError)
                          else grpc.StatusCode.NOT_FOUND, e.message)


def test_readme_grpc_client_over_a_channel(exported_classifier, served, mnist_digits):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Server(served), server)
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        _, images = mnist_digits
        # The README's client, verbatim but for the port.
        channel = grpc.insecure_channel(f"localhost:{port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "dgm"
        request.model_spec.signature_name = "serving_default"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))  # float32 [N, 32, 32, 1] in [-1, 1]
        response = stub.Predict(request, timeout=30.0)
        classes = tf.make_ndarray(response.outputs["classes"])
        names = [n.decode() for n in tf.make_ndarray(response.outputs["class_names"])]

        assert classes.tolist() == _live(exported_classifier, images)[1].tolist()
        assert names == [f"digit{c}" for c in classes] and response.model_spec.version.value == 2
        request.inputs["images"].CopyFrom(tf.make_tensor_proto((images + 1) * 127.5))  # pixels not scaled
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30.0)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "images: pixels above 1" in error.value.details()
        channel.close()
    finally:
        server.stop(None)


def test_new_task_is_a_numerically_higher_version_and_older_ones_never_change(exported_classifier, tmp_path,
                                                                             monkeypatch):
    """Versions 9 and 10 (tasks 8 and 9 of ten): "10" < "9" as strings, so this catches a
    server-side or exporter-side string comparison. A write that fails half-way, and one
    killed half-way, leave no version and no temporary folder behind."""
    scenario = data.make_scenario("mnist", 1, class_names=[f"digit{i}" for i in range(10)])
    model_dir = str(tmp_path / "classifier")
    nine = expansion.grow_discriminator(exported_classifier.model, 9, 1)
    export.export_classifier(nine, nine.classify, scenario, 8, 1, model_dir)
    v9 = _hashes(os.path.join(model_dir, "9"))
    assert {"saved_model.pb", "variables/variables.index"} <= set(v9)

    ten = expansion.grow_discriminator(nine, 10, 1)
    archive_class = type(keras.export.ExportArchive())  # the backend's subclass, which export.py gets
    write_out = archive_class.write_out

    def fails_half_way(self, filepath, **kwargs):
        write_out(self, filepath, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(archive_class, "write_out", fails_half_way)
    with pytest.raises(OSError, match="No space left"):
        export.export_classifier(ten, ten.classify, scenario, 9, 1, model_dir)
    assert os.listdir(model_dir) == ["9"]
    monkeypatch.undo()

    os.makedirs(os.path.join(model_dir, ".tmp-10-999999", "variables"))  # a writer killed half-way
    assert serving.latest_version(model_dir) == 9
    export.export_classifier(ten, ten.classify, scenario, 9, 1, model_dir)
    assert sorted(os.listdir(model_dir)) == ["10", "9"] and max(os.listdir(model_dir)) == "9"
    assert serving.latest_version(model_dir) == 10
    assert _hashes(os.path.join(model_dir, "9")) == v9

    served = serving.load_latest(model_dir)
    response = serving.predict(served, _request(np.zeros((1, 32, 32, 1), np.float32)))
    assert response.model_spec.version.value == 10
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (1, 10)


BAD_FLOAT_REQUESTS = [
    (np.zeros((1, 28, 28, 1), np.float32), r"shape must be \[N, 32, 32, 1\]; got\] \[1 28 28 1\]"),
    (np.zeros((32, 32, 1), np.float32), r"shape must be \[N, 32, 32, 1\]; got\] \[32 32 1\]"),
    (np.zeros((1, 32, 32, 3), np.float32), r"shape must be \[N, 32, 32, 1\]; got\] \[1 32 32 3\]"),
    (np.zeros((1, 32, 32, 1), np.float64), "expected to be a float tensor but is a double tensor"),
    (np.zeros((1, 32, 32, 1), np.uint8), "expected to be a float tensor but is a uint8 tensor"),
    (np.full((2, 32, 32, 1), np.nan, np.float32), "images: NaN or Inf pixels"),
    (np.full((1, 32, 32, 1), np.inf, np.float32), "images: NaN or Inf pixels"),
    (np.zeros((0, 32, 32, 1), np.float32), "images: empty batch"),
    (np.full((1, 32, 32, 1), 255.0, np.float32), "images: pixels above 1"),
    (np.full((1, 32, 32, 1), -2.0, np.float32), "images: pixels below -1"),
]
BAD_UINT8_REQUESTS = [
    (np.zeros((0, 28, 28, 1), np.uint8), "images: empty batch"),
    (np.zeros((1, 0, 0, 1), np.uint8), r"shape must be \[N, H, W, 1\] with H, W > 0; got\] \[1 0 0 1\]"),
    (np.zeros((28, 28, 1), np.uint8), r"shape must be \[N, H, W, 1\] with H, W > 0; got\] \[28 28 1\]"),
    (np.zeros((1, 28, 28, 3), np.uint8), r"shape must be \[N, H, W, 1\] with H, W > 0; got\] \[1 28 28 3\]"),
    (np.zeros((1, 28, 28, 1), np.float32), "expected to be a uint8 tensor but is a float tensor"),
]


@pytest.mark.parametrize("route", ["signature", "predict_request"])
@pytest.mark.parametrize("signature,bad,pattern", [("serving_default", *case) for case in BAD_FLOAT_REQUESTS]
                         + [("serving_uint8", *case) for case in BAD_UINT8_REQUESTS])
def test_bad_requests_fail_clearly(served, route, signature, bad, pattern):
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        if route == "signature":
            served.saved_model.signatures[signature](images=tf.constant(bad))
        else:
            serving.predict(served, _request(bad, signature))


@pytest.mark.parametrize("spec,error,pattern", [
    ({"input_name": "image"}, tf.errors.InvalidArgumentError, r"inputs \['image'\] do not match .* takes \['images'\]"),
    ({"signature": "predict"}, tf.errors.NotFoundError,
     r"signature 'predict' not found; the signatures are \['serving_default', 'serving_uint8'\]"),
    ({"name": "mnist"}, tf.errors.NotFoundError, "model 'mnist'; this server holds 'dgm'"),
    ({"version": 1}, tf.errors.NotFoundError, "version 1; the version served is 2"),
    ({"output_filter": ["logits"]}, tf.errors.InvalidArgumentError, r"output_filter \['logits'\] not in signature"),
])
def test_requests_for_what_is_not_there_fail_clearly(served, spec, error, pattern):
    with pytest.raises(error, match=pattern):
        serving.predict(served, _request(np.zeros((1, 32, 32, 1), np.float32), **spec))
