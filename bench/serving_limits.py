"""The worst request the text export's default limits admit: its time and
memory, in a process that imports only tensorflow and tensorflow_text.

`export()` admits `REQUEST_TOKEN_BUDGET // sequence_length` texts of up to
`max(MIN_REQUEST_TEXT_BYTES, 8 * sequence_length)` bytes each. For each model,
the request of that many texts of that many bytes is sent once after a
warm-up request; peak memory is the serving process's own high-water mark (VmHWM)
(TensorFlow and the loaded model included) and what the request added to it.
Writes the section "Serving limits" of RESULTS.md.

    python bench/serving_limits.py
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

SERVE = """
import json, sys, time
import numpy as np, tensorflow as tf
import tensorflow_text  # noqa: F401 (its ops)
kind, version, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
serve = tf.saved_model.load(version).signatures["serving_default"]
if kind in ("gif", "gif-decode-all"):
    serve(image_bytes=tf.stack([tf.io.encode_png(np.zeros((28, 28, 1), np.uint8))]))
    gif = open(sys.argv[5], "rb").read()
    request = dict(image_bytes=tf.constant([gif] * count))
    one = len(gif)
    if kind == "gif-decode-all":  # what decoding did before the cut: every frame
        serve = lambda image_bytes: {"frame": tf.io.decode_image(image_bytes[0], expand_animations=False)}
elif kind == "text":
    serve(text=tf.constant(["warm up"]))
    words = ["good", "bad", "film", "plot", "actor", "scene", "boring", "great"]
    text = " ".join(np.random.default_rng(0).choice(words, size))[:size]
    request = dict(text=tf.constant([text] * count))
    one = len(text.encode())
elif kind == "forged":
    # Small PNGs whose headers declare `size` x `size` 16-bit RGBA: decoding
    # would allocate 8 bytes a declared pixel.
    import struct, zlib
    png = tf.io.encode_png(np.zeros((28, 28, 1), np.uint8)).numpy()
    serve(image_bytes=tf.constant([png]))
    header = b"IHDR" + struct.pack(">IIBBBBB", size, size, 16, 6, 0, 0, 0)
    forged = png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]
    request = dict(image_bytes=tf.constant([forged] * count))
    one = len(forged)
else:
    serve(image_bytes=tf.stack([tf.io.encode_png(np.zeros((28, 28, 1), np.uint8))]))
    # The largest image the header check admits (`size` x `size`), 16-bit
    # RGBA (the costliest PNG to decode): black and white squares of 4 x 4
    # pixels, whose PNG fits in the 8 MB an image may take.
    squares = np.random.default_rng(0).integers(0, 2, (size // 4, size // 4, 4), np.uint16) * 65535
    large = tf.io.encode_png(np.repeat(np.repeat(squares, 4, axis=0), 4, axis=1))
    request = dict(image_bytes=tf.stack([large] * count))
    one = len(large.numpy())
def peak_bytes():
    # This process's own high-water mark: ru_maxrss would carry the peak of
    # the process that started it across exec.
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024
before = peak_bytes()
start = time.perf_counter()
try:
    answer = serve(**request)
    rows, refused = int(next(iter(answer.values())).shape[0]), None
except tf.errors.InvalidArgumentError as error:
    rows, refused = 0, error.message.split("assertion failed: [")[-1].split("]")[0]
seconds = time.perf_counter() - start
peak = peak_bytes()
print("RESULT " + json.dumps(dict(seconds=seconds, peak=peak, added=peak - before, bytes=one,
                                  rows=rows, refused=refused)))
"""
MODELS = {"rotten_tomatoes_small": {}, "all_minilm_l6_v2": {"labels": ["a", "b"]}}


def animated_gif(path, frames, side):
    """A GIF of `frames` frames of `side` x `side`, each one gray level:
    about 2 KB a frame, so that 400 of 1000 x 1000 fit in a request."""
    from PIL import Image

    levels = [Image.new("L", (side, side), 40 + index % 160) for index in range(frames)]
    levels[0].save(path, "GIF", save_all=True, append_images=levels[1:], optimize=False)
    return path


def worst_request(model, kind, count, size, *extra, **export_options):
    """Exports `model` and sends it the request of `count` texts of `size`
    bytes (or images of `size` x `size`) in a fresh serving process."""
    with tempfile.TemporaryDirectory() as folder:
        version = model.export(folder, **export_options)
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(SERVE), kind, str(version),
                               str(count), str(size), *map(str, extra)],
                              capture_output=True, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not found:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(found[-1][len("RESULT "):])
    print(f"{kind}: {count} x {size}: {result['seconds']:.2f} s, peak "
          f"{result['peak'] / 2**30:.2f} GiB ({result['added'] / 2**30:.2f} GiB added)",
          flush=True)
    return result


def main():
    from results import update_section
    from zoo import ImageClassifier, TextClassifier, Translator
    from zoo.image_classifier.image_classifier import MAX_REQUEST_IMAGES, MAX_REQUEST_PIXELS
    from zoo.image_classifier.preprocessor import MAX_IMAGE_PIXELS
    from zoo.text_classifier.text_classifier import MIN_REQUEST_TEXT_BYTES, REQUEST_TOKEN_BUDGET
    from zoo.translator.serving import MAX_REQUEST_TEXT_BYTES, MAX_REQUEST_TEXTS

    rows = []
    for name, arguments in MODELS.items():
        model = TextClassifier.from_preset(name, **arguments)
        count = max(1, REQUEST_TOKEN_BUDGET // model.sequence_length)
        size = max(MIN_REQUEST_TEXT_BYTES, 8 * model.sequence_length)
        rows.append((name, model.sequence_length, count, size,
                     worst_request(model, "text", count, size)))
    side = int(MAX_IMAGE_PIXELS ** 0.5)
    image = worst_request(ImageClassifier.from_preset("mnist_vit_micro"), "image",
                          MAX_REQUEST_PIXELS // MAX_IMAGE_PIXELS, side)
    forged = worst_request(ImageClassifier.from_preset("mnist_vit_micro"), "forged",
                           MAX_REQUEST_IMAGES, side)
    with tempfile.TemporaryDirectory() as folder:
        gif = animated_gif(Path(folder) / "animated.gif", 400, 1000)
        animated = {kind: worst_request(ImageClassifier.from_preset("mnist_vit_micro"), kind, 1,
                                        1000, gif) for kind in ("gif", "gif-decode-all")}
    translation = worst_request(Translator.from_preset("gramps_en_de_small"), "text",
                                MAX_REQUEST_TEXTS, MAX_REQUEST_TEXT_BYTES)
    lines = [
        f"`python bench/serving_limits.py` ({os.cpu_count()} CPU cores). The worst request the "
        "text export's default limits admit (`REQUEST_TOKEN_BUDGET // sequence_length` texts, "
        "each of `max(16384, 8 * sequence_length)` bytes), sent once after a warm-up request "
        "to the SavedModel in a process that imports only tensorflow and tensorflow_text. "
        "Peak: the serving process's own high-water mark (VmHWM, TensorFlow and the model included); added: "
        "what the request added to it. A request over a limit is refused with an "
        "`InvalidArgumentError` naming it; an empty request gets empty outputs.",
        "",
        "| model | sequence length | texts | bytes each | seconds | peak | added by the request |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, length, count, size, result in rows:
        lines.append(f"| {name} | {length} | {count} | {size} | {result['seconds']:.2f} | "
                     f"{result['peak'] / 2**30:.2f} GiB | {result['added'] / 2**30:.2f} GiB |")
    lines += [
        "",
        f"Images: the worst request the image export's defaults admit: "
        f"{MAX_REQUEST_PIXELS // MAX_IMAGE_PIXELS} PNGs each declaring the largest image the "
        f"header check admits ({side} x {side}, 16-bit RGBA, the costliest PNG to decode; "
        f"{image['bytes']} bytes each, under the 8 MB per image), since a request's images "
        f"may declare {MAX_REQUEST_PIXELS} pixels together (`max_request_pixels`), to "
        f"`mnist_vit_micro`'s export: {image['seconds']:.2f} s, peak "
        f"{image['peak'] / 2**30:.2f} GiB, {image['added'] / 2**30:.2f} GiB added by the "
        f"request. {MAX_REQUEST_IMAGES} PNGs of {forged['bytes']} bytes each declaring the same "
        "(a request that held a server for 61 s and 1.97 GB before that bound) are refused "
        f"before decoding in {forged['seconds']:.2f} s, adding "
        f"{forged['added'] / 2**30:.2f} GiB: \"{forged['refused']}\"",
    ]
    lines += [
        "",
        f"An animated GIF of 400 frames of 1000 x 1000 ({animated['gif']['bytes']} bytes): "
        "its frames after the first are cut away before decoding, so the export takes "
        f"{animated['gif']['seconds']:.2f} s and adds {animated['gif']['added'] / 2**30:.2f} "
        "GiB; `tf.io.decode_image(..., expand_animations=False)` alone, in the same kind of "
        f"process, decodes every frame: {animated['gif-decode-all']['seconds']:.2f} s and "
        f"{animated['gif-decode-all']['added'] / 2**30:.2f} GiB added.",
    ]
    lines += [
        "",
        f"Translation: the worst request the translator export's defaults admit, "
        f"{MAX_REQUEST_TEXTS} texts of {MAX_REQUEST_TEXT_BYTES} bytes (each cut to the model's "
        f"source length), beam 4, to `gramps_en_de_small`'s export: "
        f"{translation['seconds']:.2f} s, peak {translation['peak'] / 2**30:.2f} GiB, "
        f"{translation['added'] / 2**30:.2f} GiB added by the request.",
    ]
    update_section("Serving limits", "\n".join(lines))


if __name__ == "__main__":
    main()
