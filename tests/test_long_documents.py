"""Fine-tuning a short-context body on documents longer than its positions:
tiled positions and `local_window` attention (a file of its own so that
`make test`'s two workers share the long tests)."""

import numpy as np
import pytest


def test_longer_sequences_copy_the_learned_positions():
    from zoo import TextClassifier
    from zoo.text_encoder.text_encoder import TextEncoder

    encoder = TextEncoder.from_preset("english_body_small")
    learned = encoder.backbone.position_embeddings.numpy()
    long = TextClassifier.from_preset("english_body_small", labels=["a", "b"],
                                      sequence_length=1100, attention="local_window",
                                      window_size=64)
    extended = long.backbone.position_embeddings.numpy()
    rows = len(learned)
    assert extended.shape == (1100, learned.shape[1])
    for start in range(0, 1100, rows):
        np.testing.assert_array_equal(extended[start:start + rows], learned[:1100 - start])
    short = TextClassifier.from_preset("english_body_small", labels=["a", "b"], sequence_length=16)
    np.testing.assert_array_equal(short.backbone.position_embeddings.numpy(),
                                  learned[:16])


def long_review_documents(texts, labels, tokens_per_document, token_counts):
    """Documents of one label each, reviews joined until `tokens_per_document`
    WordPiece tokens: a long-text sentiment task from the embedded data."""
    documents = {"rotten": [], "fresh": []}
    current = {"rotten": ([], 0), "fresh": ([], 0)}
    for text, label, tokens in zip(texts, labels, token_counts):
        parts, count = current[label]
        parts.append(str(text))
        count += int(tokens)
        if count >= tokens_per_document:
            documents[label].append(" ".join(parts))
            parts, count = [], 0
        current[label] = (parts, count)
    count = min(map(len, documents.values()))
    pairs = [(d, label) for i in range(count) for label in documents for d in [documents[label][i]]]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


@pytest.mark.slow
def test_body_fine_tunes_on_texts_of_over_1024_tokens_with_local_window():
    import keras

    from zoo import TextClassifier
    from zoo.datasets import load_sentiment
    from zoo.text_classifier.train import fine_tuning_schedule

    (texts, labels), (test_texts, test_labels) = load_sentiment()
    names = np.array(["rotten", "fresh"])
    # Seeded before the head is built, so the result does not depend on which tests ran first.
    keras.utils.set_random_seed(0)
    model = TextClassifier.from_preset("english_body_small", labels=["rotten", "fresh"],
                                       sequence_length=1152, attention="local_window",
                                       window_size=64)
    def token_counts(texts):  # one batch through the tokenizer, not a call per text
        return model.preprocessor.tokenize(list(texts)).row_lengths().numpy()

    train = long_review_documents(texts[:4000], names[labels[:4000]], 1100,
                                  token_counts(texts[:4000]))
    test = long_review_documents(test_texts, names[test_labels], 1100, token_counts(test_texts))
    ids = model.preprocess(np.asarray(test[0][:2]))
    assert ids.shape[1] >= 1024 and int((ids.numpy() > 0).sum(1).min()) >= 1024
    epochs, batch_size = 2, 2
    schedule = fine_tuning_schedule(len(train[0]), batch_size, epochs)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01))
    history = model.fit(train[0], train[1], epochs=epochs, batch_size=batch_size, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    accuracy = model.evaluate(test[0], test[1], verbose=0)[1]
    assert len(test[0]) >= 50 and accuracy >= 0.75, accuracy
