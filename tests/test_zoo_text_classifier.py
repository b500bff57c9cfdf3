"""TextClassifier on raw strings: fit, predict, labels and bad input."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_ARCHITECTURE
from zoo import TextClassifier


def test_label_names_learned_from_string_labels(tiny_classifier):
    assert tiny_classifier.label_names == ["fresh", "rotten"]
    names, probabilities = tiny_classifier.predict_labels(["a moving, wonderful film", "boring"])
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    assert set(names) <= {"fresh", "rotten"}


def test_evaluate_accepts_int_string_and_dataset_labels(tiny_classifier, sentiment_sample):
    _, (texts, labels) = sentiment_sample
    by_name = tiny_classifier.evaluate(texts, labels, verbose=0)
    by_id = tiny_classifier.evaluate(texts, tiny_classifier.label_ids(labels), verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((texts.astype(str), labels.astype(str)))
    by_dataset = tiny_classifier.evaluate(dataset, verbose=0)
    np.testing.assert_allclose(by_name, by_id, rtol=1e-5)
    np.testing.assert_allclose(by_name, by_dataset, rtol=1e-5)


def test_it_learns_something(tiny_classifier, sentiment_sample):
    (texts, labels), _ = sentiment_sample
    _, accuracy = tiny_classifier.evaluate(texts, labels, verbose=0)
    assert accuracy > 0.6  # training accuracy after two epochs; chance is 0.5


def test_unseen_labels_get_a_clear_error(tiny_classifier):
    with pytest.raises(ValueError, match=r"Labels \['meh'\] are not among the model's labels"):
        tiny_classifier.evaluate(["fine"], ["meh"], verbose=0)


def test_single_class_training_data_is_refused():
    model = TextClassifier(labels=["pos", "neg"], **TINY_ARCHITECTURE)
    model.compile()
    with pytest.raises(ValueError, match="1 classes|single class"):
        model.fit(["good", "great", "fine"], ["pos", "pos", "pos"], verbose=0)


def test_awkward_texts_have_defined_answers(tiny_classifier):
    texts = ["", "word " * 20000, b"\xff\xfe not utf-8 \xc3".decode("latin-1"), "\u00e9\u00e8 caf\u00e9"]
    _, probabilities = tiny_classifier.predict_labels(texts)
    assert np.all(np.isfinite(probabilities))
    ids = tiny_classifier.preprocess(tf.constant(["word " * 20000, ""]))
    assert ids.shape == (2, TINY_ARCHITECTURE["sequence_length"])  # truncated, not crashing
    raw_bytes = tiny_classifier.preprocess(tf.constant([b"\xff\xfe bad bytes"]))
    assert raw_bytes.shape[0] == 1 and raw_bytes.shape[1] <= TINY_ARCHITECTURE["sequence_length"]


def test_a_single_string_is_refused(tiny_classifier):
    with pytest.raises(TypeError, match="list of texts"):
        tiny_classifier.predict("just one string")


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_classes"):
        TextClassifier(num_classes=1)
    with pytest.raises(ValueError, match="duplicates"):
        TextClassifier(labels=["a", "a"])
    with pytest.raises(ValueError, match="attention"):
        TextClassifier(num_classes=2, attention="fourier", **{k: v for k, v in TINY_ARCHITECTURE.items()})


@pytest.mark.parametrize("attention", ["local_window", "additive", "self_attention"])
def test_every_attention_kind_trains(attention, sentiment_sample):
    (texts, labels), _ = sentiment_sample
    model = TextClassifier(num_classes=2, **{**TINY_ARCHITECTURE, "attention": attention, "window_size": 4})
    model.compile()
    history = model.fit(texts[:64], labels[:64], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_attention_maps_of_every_block(tiny_classifier):
    maps = tiny_classifier.attention_maps(["a wonderful film", "dull"])
    tokens, _ = tiny_classifier.attention_tokens(["a wonderful film"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert [name for name, *_ in maps] == ["block 1"]
    _, weights, allowed, query_mask = maps[0]
    assert weights.shape[:2] == (2, 2) and query_mask[0].sum() == len(tokens)
    np.testing.assert_allclose(weights[query_mask.nonzero()[0], :, query_mask.nonzero()[1]].sum(-1),
                               1.0, atol=1e-5)
    assert np.all(weights * ~allowed == 0)  # nothing on padding


def test_batches_pad_to_their_longest_text_and_predictions_do_not_depend_on_it(tiny_classifier):
    short, long = "a fine film", "word " * 200
    ids = tiny_classifier.preprocess(tf.constant([short]))
    assert ids.shape[1] % 8 == 0 and ids.shape[1] < TINY_ARCHITECTURE["sequence_length"]
    alone = tiny_classifier.predict_labels([short])[1][0]
    beside_long = tiny_classifier.predict_labels([short, long])[1][0]
    np.testing.assert_allclose(alone, beside_long, atol=1e-5)


def test_predict_keeps_the_order_of_its_inputs(tiny_classifier, sentiment_sample):
    (texts, _), _ = sentiment_sample
    texts = list(texts[:70])
    forward = tiny_classifier.predict(texts, verbose=0)
    backward = tiny_classifier.predict(texts[::-1], verbose=0)
    np.testing.assert_allclose(forward, backward[::-1], atol=1e-5)


def test_a_vocabulary_is_learned_once_for_the_same_texts_and_settings(sentiment_sample):
    """`fit` after `adapt`, each trial of `tune`: the same texts and settings
    give the vocabulary learned before; anything else is learned anew."""
    from zoo import pipeline

    (texts, _), _ = sentiment_sample
    texts = [str(t) for t in texts[:40]]

    def learn(texts, size=2000, lowercase=True):
        return pipeline.learn_word_piece_vocabulary(texts, size, ["[PAD]", "[UNK]"], lowercase)

    first = learn(texts)
    assert 50 < len(first) < 2000
    first.append("changed by its caller")
    again = learn(texts)
    assert again == first[:-1]
    pipeline._LEARNED_VOCABULARIES.clear()
    assert learn(texts) == again  # what learning gives, not a stale copy
    assert "quokka" in learn(texts + ["a quokka"] * 50) and "quokka" not in again
    smaller = learn(texts, size=50)
    assert len(smaller) <= 50 and smaller != again
    assert learn(texts, lowercase=False) != again


def test_length_grouped_batches_hold_every_example_once_in_a_known_count():
    from zoo.pipeline import length_grouped_batches

    rng = np.random.default_rng(0)
    texts = np.array(["x" * int(n) for n in rng.integers(1, 300, size=1000)])
    data = tf.data.Dataset.from_tensor_slices((texts, np.arange(1000)))
    batches = length_grouped_batches(data.shuffle(1000, seed=0), 16)
    assert int(batches.cardinality()) == 63
    seen, spreads = [], []
    for batch_texts, ids in batches:
        seen += ids.numpy().tolist()
        lengths = [len(t) for t in batch_texts.numpy()]
        spreads.append(max(lengths) - min(lengths))
    assert sorted(seen) == list(range(1000))
    # Sorted runs: a batch spans a few characters, not the whole range.
    assert np.median(spreads) < 20


def test_long_attention_is_summarized_a_few_rows_at_a_time(monkeypatch):
    """The statistics and figure of a long sequence read its weights in row
    chunks and max-pool them into cells; both equal what the whole weights
    give (forced here at 38 tokens: chunks of one cell of 5 rows, 8 cells a side)."""
    from zoo import backbone
    from zoo.report import attention_statistics

    import keras

    keras.utils.set_random_seed(1)
    model = TextClassifier(num_classes=2, **{**TINY_ARCHITECTURE, "num_layers": 2,
                                             "sequence_length": 64, "attention": "local_window",
                                             "window_size": 4, "global_tokens": 1})
    texts = ["a wonderful film " * 12, "dull and long " * 7]
    model.adapt(texts)
    whole = model.attention_maps(texts)
    monkeypatch.setattr(backbone, "SUMMARY_CELLS", 8)
    monkeypatch.setattr(backbone, "ROW_CHUNK_ELEMENTS", 2 * 2 * 64 * 3)
    summary = model.attention_summary(texts)
    expected, got = attention_statistics(whole), attention_statistics(summary)
    assert got["heads"] == expected["heads"] == 4
    for name, heads in expected["layers"].items():
        for want, have in zip(heads, got["layers"][name]):
            assert have["state"] == want["state"]
            np.testing.assert_allclose([have["entropy"], have["max_weight"]],
                                       [want["entropy"], want["max_weight"]], rtol=1e-9)
    for (name, weights, _, query_mask), layer in zip(whole, summary):
        real = int(query_mask[0].sum())
        first = np.asarray(weights)[0][:, :real, :real]
        cell = -(-real // 8)
        assert layer.name == name and layer.cell == cell > 1
        cells = -(-real // cell)
        assert layer.pooled.shape == (2, cells, cells)
        for i in range(cells):
            for j in range(cells):
                np.testing.assert_allclose(
                    layer.pooled[:, i, j],
                    first[:, i * cell:(i + 1) * cell, j * cell:(j + 1) * cell].max(axis=(1, 2)),
                    rtol=1e-6)
        # The global token's column: every query gives it weight.
        assert np.all(layer.pooled[:, :, 0] > 0)
        np.testing.assert_allclose(layer.global_row, first[:, 0], rtol=1e-6)
        np.testing.assert_allclose(layer.global_column, first[:, :, 0], rtol=1e-6)
        window = 4
        assert layer.band.shape == (2, cells, 2 * window - 1)
        for i in range(cells):
            queries = range(i * cell, min(real, (i + 1) * cell))
            for d in range(-window + 1, window):
                expected = np.mean([first[:, q, q + d] if 0 <= q + d < real else np.zeros(2)
                                    for q in queries], axis=0)
                np.testing.assert_allclose(layer.band[:, i, d + window - 1], expected,
                                           rtol=1e-5, atol=1e-7)


def test_a_long_sequence_figure_draws_the_band_and_the_global_token(monkeypatch, tmp_path):
    from PIL import Image

    from zoo import backbone

    model = TextClassifier(num_classes=2, **{**TINY_ARCHITECTURE, "num_layers": 2,
                                             "sequence_length": 64, "attention": "local_window",
                                             "window_size": 4, "global_tokens": 1})
    texts = ["a wonderful film " * 12, "dull and long " * 7]
    model.adapt(texts)
    monkeypatch.setattr(backbone, "SUMMARY_CELLS", 8)
    path = tmp_path / "attention.png"
    assert model.save_attention_figure(texts, path) == [path]
    with Image.open(path) as image:
        # Three panels a layer (band, the global token's row and column),
        # not a T x T panel per head.
        assert image.size[0] <= 1700 and image.size[1] <= 800, image.size


def test_the_attention_summary_of_2048_tokens_never_holds_their_weights(monkeypatch):
    """NumPy's peak while summarizing stays a fraction of one layer's whole
    weights in float64, what the statistics used to convert them to."""
    import tracemalloc

    import keras

    from zoo import backbone

    keras.utils.set_random_seed(0)
    model = TextClassifier(num_classes=2, **{**TINY_ARCHITECTURE, "sequence_length": 2048,
                                             "attention": "local_window", "window_size": 32,
                                             "global_tokens": 1})
    texts = ["word " * 2100, "other words " * 1100]
    model.adapt(texts)
    monkeypatch.setattr(backbone, "ROW_CHUNK_ELEMENTS", 1 << 18)
    tracemalloc.start()
    try:
        layers = model.attention_summary(texts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole = 2 * 2 * 2048 * 2048 * 8  # (B, H, T, T) float64 of one layer
    assert layers[0].rows.sum() == 2 * 2 * 2048 and layers[0].cell == 8
    assert peak < whole / 4, (peak, whole)
