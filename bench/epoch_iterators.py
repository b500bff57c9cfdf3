"""The data iterators of `fit`, `evaluate` and `predict`: the zoo's against
Keras's own, in the same process.

Keras 3.15 creates an iterator at the end of every pass that the next pass
discards, and under a strategy takes a batch at every `fit` and `evaluate`
to build the model (`zoo.keras_compat`, entries 2 and 8). This trains a small
text classifier on 400 reviews (13 batches of 32, validation on 64), three
epochs, then evaluates and predicts, with the zoo's routes around both, and
again with Keras's own steps put back; each configuration is measured three
times after a warm-up and the median kept. TensorFlow's graph optimizer is on,
as users run it (the test suite turns it off).

Usage: `python bench/epoch_iterators.py [--strategy default|one_device]`.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import zoo.pipeline  # noqa: E402
from zoo import TextClassifier  # noqa: E402
from zoo.datasets import load_sentiment  # noqa: E402

SIZES = dict(vocabulary_size=600, sequence_length=24, hidden_dim=32, num_layers=1, num_heads=2,
             intermediate_dim=64, dropout=0.0)


def measure(strategy, routes_around):
    zoo_build, zoo_one_pass = zoo.pipeline.build_from_element_spec, zoo.pipeline.one_iterator_per_pass
    zoo_stop = zoo.pipeline.StopAfterLastPrediction.on_predict_batch_end
    if not routes_around:  # Keras's own steps
        zoo.pipeline.build_from_element_spec = (
            lambda keras_build, iterator, data_batch: keras_build(iterator, data_batch))
        zoo.pipeline.one_iterator_per_pass = lambda iterator: None
        zoo.pipeline.StopAfterLastPrediction.on_predict_batch_end = lambda *args, **kwargs: None
    created = []
    dataset_iter = tf.data.Dataset.__iter__
    tf.data.Dataset.__iter__ = lambda dataset: created.append(1) or dataset_iter(dataset)
    try:
        (texts, labels), (test_texts, test_labels) = load_sentiment()
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = TextClassifier(num_classes=2, **SIZES)
            model.compile()
        validation = (test_texts[:64], test_labels[:64])
        model.fit(texts[:400], labels[:400], epochs=1, verbose=0, validation_data=validation)
        figures = {}
        for name, run in {
                "fit, 3 epochs with validation": lambda: model.fit(
                    texts[:400], labels[:400], epochs=3, verbose=0, validation_data=validation),
                "evaluate, 64 texts": lambda: model.evaluate(*validation, verbose=0),
                "predict, 64 texts": lambda: model.predict(validation[0], verbose=0)}.items():
            seconds, counts = [], []
            for _ in range(3):
                del created[:]
                start = time.process_time()
                run()
                seconds.append(time.process_time() - start)
                counts.append(len(created))
            figures[name] = (statistics.median(seconds), max(counts))
        return figures
    finally:
        tf.data.Dataset.__iter__ = dataset_iter
        zoo.pipeline.build_from_element_spec, zoo.pipeline.one_iterator_per_pass = (
            zoo_build, zoo_one_pass)
        zoo.pipeline.StopAfterLastPrediction.on_predict_batch_end = zoo_stop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=("default", "one_device"), default="default")
    args = parser.parse_args()
    strategy = (tf.distribute.OneDeviceStrategy("/cpu:0") if args.strategy == "one_device"
                else tf.distribute.get_strategy())
    keras_own, ours = measure(strategy, False), measure(strategy, True)
    print(f"strategy: {args.strategy}; CPU seconds (median of 3) and iterators created")
    print("| call | Keras's steps | the zoo's | Keras / zoo |\n|---|---|---|---|")
    for name, (seconds, count) in ours.items():
        keras_seconds, keras_count = keras_own[name]
        print(f"| {name} | {keras_seconds:.2f} s, {keras_count} iterators | {seconds:.2f} s, "
              f"{count} iterators | {keras_seconds / seconds:.2f}x |")


if __name__ == "__main__":
    main()
