"""`rematerialize=True`: a backbone whose blocks recompute their activations in
the backward pass trains exactly as one that keeps them."""

import numpy as np
import tensorflow as tf


def _loss_and_gradients(backbone, token_ids):
    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            hidden = backbone(ids, training=True)["sequence_output"]
            loss = tf.reduce_sum(tf.sin(hidden))
        return loss, tape.gradient(loss, backbone.trainable_variables)

    return step(token_ids)


def test_gradients_under_dropout_equal_those_of_the_kept_activations():
    import keras

    from zoo.text_transformer.backbone import TextBackbone

    keras.utils.set_random_seed(3)
    kept = TextBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
                        intermediate_dim=32, sequence_length=40, attention="local_window",
                        window_size=4, global_tokens=1, dropout=0.3)
    recomputed = kept.with_changes(rematerialize=True)
    assert recomputed.rematerialize and not kept.rematerialize
    # The same weights and the same dropout seeds: the two must draw the same masks.
    for ours, theirs in zip(kept.variables, recomputed.variables):
        assert ours.path.split("/")[-1] == theirs.path.split("/")[-1]
        theirs.assign(ours)
    token_ids = np.random.default_rng(0).integers(1, 50, (3, 37)).astype("int32")
    token_ids[1, 20:] = 0  # padding, as a batch of texts of two lengths has
    kept_loss, kept_grads = _loss_and_gradients(kept, token_ids)
    loss, grads = _loss_and_gradients(recomputed, token_ids)
    inference = float(tf.reduce_sum(tf.sin(kept(token_ids)["sequence_output"])))
    assert abs(float(kept_loss) - inference) > 1e-3, "dropout was not active"
    np.testing.assert_allclose(float(loss), float(kept_loss), rtol=1e-6)
    assert len(grads) == len(kept_grads) > 0
    for variable, ours, theirs in zip(kept.trainable_variables, kept_grads, grads):
        assert theirs is not None, variable.path
        np.testing.assert_allclose(tf.convert_to_tensor(theirs).numpy(),
                                   tf.convert_to_tensor(ours).numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=variable.path)
    # Both advanced their seeds alike: the next step draws the same masks again.
    for ours, theirs in zip(kept.variables, recomputed.variables):
        if ours.name == "seed_generator_state":
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_a_fine_tuned_body_keeps_the_setting_through_fit_and_a_keras_file(tmp_path):
    import keras

    from zoo import TextClassifier

    keras.utils.set_random_seed(0)
    model = TextClassifier.from_preset("english_body_small", labels=["no", "yes"],
                                       rematerialize=True)
    assert model.backbone.rematerialize
    model.compile(optimizer="adam")
    texts = np.array(["a fine film", "dull and long", "lovely", "awful plot"] * 4)
    history = model.fit(texts, np.array(["yes", "no", "yes", "no"] * 4), epochs=1,
                        batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.backbone.rematerialize
    np.testing.assert_array_equal(loaded.predict(texts[:4], verbose=0),
                                  model.predict(texts[:4], verbose=0))
