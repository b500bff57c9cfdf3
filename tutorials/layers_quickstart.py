"""Quickstart: the four keras_selfattn layers in a sentiment classifier.

Builds a small Keras model that uses SelfAttention, MultiHead, LocalWindow and
Additive, trains it on Rotten Tomatoes review snippets (embedded data, no
download), saves it as `.keras`, reloads it with nothing but `import
keras_selfattn`, and classifies a few sentences.

Run: `make demo`, or `python tutorials/layers_quickstart.py [--fast]`.
"""

import argparse
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_selfattn as ksa  # noqa: E402
from zoo.datasets import SENTIMENT_LABELS, load_sentiment  # noqa: E402

SEQUENCE_LENGTH = 48
VOCABULARY = 12000
WIDTH = 64


def build_model(train_texts):
    """Raw strings in, two logits out, with every attention layer inside."""
    vectorize = keras.layers.TextVectorization(
        max_tokens=VOCABULARY, output_sequence_length=SEQUENCE_LENGTH
    )
    vectorize.adapt(train_texts)
    texts = keras.Input(shape=(1,), dtype="string", name="text")
    ids = vectorize(texts)
    # Id 0 is padding: the mask flows through every attention layer.
    x = ksa.TokenAndPositionEmbedding(
        VOCABULARY, SEQUENCE_LENGTH, WIDTH, mask_zero=True
    )(ids)
    x = keras.layers.Add()([x, ksa.MultiHead(num_heads=4, key_dim=16, dropout=0.1)(x)])
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.Add()([x, ksa.LocalWindow(num_heads=4, key_dim=16, window_size=8)(x)])
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.Add()([x, ksa.Additive(num_heads=2)(x)])
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.Add()([x, ksa.SelfAttention()(x)])
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(0.3)(x)
    logits = keras.layers.Dense(len(SENTIMENT_LABELS), name="logits")(x)
    return keras.Model(texts, logits, name="sentiment_quickstart")


def main(fast=False, out_dir=None):
    keras.utils.set_random_seed(0)
    (train_texts, train_labels), (test_texts, test_labels) = load_sentiment()
    if fast:
        train_texts, train_labels = train_texts[:512], train_labels[:512]
        test_texts, test_labels = test_texts[:256], test_labels[:256]
    print(f"Training on {len(train_texts)} review snippets, testing on {len(test_texts)}.")

    model = build_model(train_texts)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    def batches(texts, labels, shuffle=False):
        data = tf.data.Dataset.from_tensor_slices((texts.astype(str)[:, None], labels))
        if shuffle:
            data = data.shuffle(len(texts), seed=0)
        return data.batch(64)

    validation = len(train_texts) // 10
    model.fit(
        batches(train_texts[validation:], train_labels[validation:], shuffle=True),
        validation_data=batches(train_texts[:validation], train_labels[:validation]),
        epochs=1 if fast else 2,
        shuffle=False,  # the dataset shuffles itself
        verbose=2,
    )
    _, accuracy = model.evaluate(batches(test_texts, test_labels), verbose=0)
    print(f"Test accuracy: {accuracy:.3f}")

    out_dir = out_dir or tempfile.mkdtemp(prefix="keras_selfattn_demo_")
    path = os.path.join(out_dir, "sentiment.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)  # no custom_objects needed
    sentences = tf.constant([
        ["A warm, funny and beautifully acted film."],
        ["Dull, predictable and far too long."],
        ["The plot makes no sense, but the cast is great fun to watch."],
    ])
    before = model.predict(sentences, verbose=0)
    after = reloaded.predict(sentences, verbose=0)
    assert np.array_equal(before, after), "reloaded model answers differently"
    print(f"Saved to {path}; the reloaded model gives identical predictions:")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(after))
    for (sentence,), p in zip(sentences.numpy(), probabilities):
        label = SENTIMENT_LABELS[int(p.argmax())]
        print(f"  {label:>6} ({p.max():.2f})  {sentence.decode()}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a tiny run for the tests")
    parser.add_argument("--out", default=None, help="folder for the .keras file")
    args = parser.parse_args()
    main(fast=args.fast, out_dir=args.out)
