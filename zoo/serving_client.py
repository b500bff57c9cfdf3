"""Answers TF Serving requests from an exported model, with TensorFlow alone.

The TF Serving binary is not installable here, so this stands in for it the
way that matters: a process that imports only `tensorflow` (and
`tensorflow_text`, whose ops the stock server links, only when the export
uses them: the text models do, the image classifier does not) loads the
newest version of an export and answers request bodies shaped exactly as TF
Serving's REST API (`{"signature_name", "instances" | "inputs"}`) and gRPC
`PredictRequest` messages, decoding them into tensors as the server does.

Run it as a script so that nothing else is imported:

    python zoo/serving_client.py EXPORT_DIR "a text" "another text"
    python zoo/serving_client.py RUN_DIR "a text"     # the run's export/
    python zoo/serving_client.py --verbose ...        # with TensorFlow's C++ log lines
    python zoo/serving_client.py EXPORT_DIR image.png another.jpg
    python zoo/serving_client.py TRANSLATOR_EXPORT_DIR "Open the family tree"
"""

import base64
import contextlib
import importlib.util
import json
import re
import sys
from pathlib import Path

if __name__ == "__main__":
    # Before TensorFlow starts: its C++ start-up lines are hidden unless
    # --verbose. The filter is loaded by its path, so that nothing of the zoo
    # package is imported into this serving process.
    _spec = importlib.util.spec_from_file_location(
        "_tensorflow_logs", Path(__file__).with_name("tensorflow_logs.py"))
    _logs = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_logs)
    _QUIET = (contextlib.nullcontext() if "--verbose" in sys.argv[1:]
              else _logs.without_tensorflow_logs())
    _QUIET.__enter__()


def _tensorflow():
    # Imported when a model is loaded, not before: a mistake in the
    # arguments (a wrong folder, no input) is answered without starting it.
    import tensorflow as tf

    return tf


def _versions(folder):
    return [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] \
        if folder.is_dir() else []


def latest_version(model_dir):
    """The newest numbered version under `model_dir`, or under its `export/`
    when it is a training run's folder."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder} does not exist; expected an export folder of numbered "
                         "versions (RUN/export) or a training run's folder.")
    versions = _versions(folder) or _versions(folder / "export")
    if not versions:
        raise ValueError(f"{folder} holds no numbered version folder, and no export/ that "
                         "does: expected an export (RUN/export) or a training run's folder.")
    return max(versions, key=lambda p: int(p.name))


def load(model_dir):
    """Loads the newest version under `model_dir`, as TF Serving does."""
    path = str(latest_version(model_dir))
    tf = _tensorflow()
    try:
        return tf.saved_model.load(path)
    except RuntimeError as error:
        if "Op type not registered" not in str(error):
            raise
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    return tf.saved_model.load(path)


def _decode_value(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    return value


def _encode_value(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode_value(v) for k, v in value.items()}
    return value


def rest_predict(loaded, body):
    """A REST `:predict` body (JSON text) -> the response body (JSON text)."""
    request = json.loads(body)
    signature = loaded.signatures[request.get("signature_name", "serving_default")]
    specs = signature.structured_input_signature[1]
    if "instances" in request:
        instances = request["instances"]
        # As in TF Serving, an object whose only key is "b64" is a value
        # (binary, base64-encoded), not a map of named inputs.
        named = all(isinstance(i, dict) and set(i) != {"b64"} for i in instances)
        if len(specs) == 1 and not named:
            (name,) = specs
            columns = {name: [_decode_value(i) for i in instances]}
        else:
            columns = {name: [_decode_value(i[name]) for i in instances] for name in specs}
        row_format = True
    elif "inputs" in request:
        inputs = request["inputs"]
        if not isinstance(inputs, dict):
            (name,) = specs
            inputs = {name: inputs}
        columns = {name: _decode_value(value) for name, value in inputs.items()}
        row_format = False
    else:
        raise ValueError('A predict request needs "instances" or "inputs".')
    tf = _tensorflow()
    tensors = {name: tf.constant(columns[name], dtype=specs[name].dtype) for name in specs}
    outputs = {name: value.numpy().tolist() for name, value in signature(**tensors).items()}
    if not row_format:
        return json.dumps({"outputs": _encode_value(outputs)})
    count = len(next(iter(outputs.values())))
    rows = [{name: _encode_value(values[i]) for name, values in outputs.items()} for i in range(count)]
    if len(outputs) == 1:
        rows = [next(iter(row.values())) for row in rows]
    return json.dumps({"predictions": rows})


def grpc_predict(loaded, request_bytes):
    """A serialized `PredictRequest` -> a serialized `PredictResponse`."""
    from tensorflow_serving.apis import predict_pb2

    tf = _tensorflow()
    request = predict_pb2.PredictRequest.FromString(request_bytes)
    signature = loaded.signatures[request.model_spec.signature_name or "serving_default"]
    specs = signature.structured_input_signature[1]
    tensors = {
        name: tf.constant(tf.make_ndarray(proto), dtype=specs[name].dtype)
        for name, proto in request.inputs.items()
    }
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in signature(**tensors).items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response.SerializeToString()


def rest_in_fresh_process(model_dir, body):
    """Sends a REST `:predict` body to the newest export under `model_dir`
    from a new Python process that imports only this module (so only
    tensorflow, and tensorflow_text when the export needs it); returns the
    response body as a dict."""
    import subprocess

    answer = subprocess.run(
        [sys.executable, __file__, "--rest", str(model_dir), body],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(answer)


USAGE = "usage: python zoo/serving_client.py EXPORT_OR_RUN_DIR INPUT [INPUT ...]"


def main(argv):
    """Answers the inputs in `argv`; a user's mistake (a wrong folder, a
    missing file, an input the export refuses) is one `error:` line and
    exit code 2."""
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    try:
        return _answer(argv)
    except Exception as error:  # noqa: BLE001 (re-raised unless a user's mistake)
        if not _is_a_mistake(error):
            raise
        message = getattr(error, "message", None) or str(error)
        refused = re.search(r"assertion failed: \[(.*?)\](?:\s+\[|\s*$)", message, re.DOTALL)
        if refused:  # an export's limit: its message, not the graph's node names
            message = refused.group(1)
        lines = [line.strip() for line in message.splitlines()
                 if line.strip() and not line.strip().startswith("[[")]  # graph node names
        print(f"error: {' '.join(lines)}", file=sys.stderr)
        return 2


def _is_a_mistake(error):
    """A wrong folder or file, or an input the export refuses."""
    tf = sys.modules.get("tensorflow")
    return isinstance(error, (ValueError, OSError)) or (
        tf is not None and isinstance(error, tf.errors.InvalidArgumentError))


def _answer(argv):
    if len(argv) == 3 and argv[0] == "--rest":  # one raw request body
        print(rest_predict(load(argv[1]), argv[2]))
        return 0
    if len(argv) < 2:
        raise ValueError(f"give a model folder and at least one input. {USAGE}")
    loaded = load(argv[0])
    (input_name,) = loaded.signatures["serving_default"].structured_input_signature[1]
    if input_name == "image_bytes":  # files, sent base64-encoded as REST clients do
        instances = [{"b64": base64.b64encode(Path(p).read_bytes()).decode()} for p in argv[1:]]
    else:
        instances = argv[1:]
    body = json.dumps({"signature_name": "serving_default", "instances": instances})
    answer = json.loads(rest_predict(loaded, body))
    for text, prediction in zip(argv[1:], answer["predictions"]):
        if isinstance(prediction, str):  # a translator's single output
            print(f"{prediction}\t{text}")
        else:
            probability = max(prediction["probabilities"])
            print(f"{prediction['label']}\t{probability:.3f}\t{text}")
    return 0


if __name__ == "__main__":
    try:
        code = main([arg for arg in sys.argv[1:] if arg != "--verbose"])
    finally:
        _QUIET.__exit__(None, None, None)
    sys.exit(code)
