"""Position embeddings, patch embedding and the transformer blocks."""

import keras
import numpy as np
import pytest

import keras_selfattn as ksa
from backend import compiled, numpy, run_as_a_step, tensorflow_only


def test_sine_position_encoding_matches_formula():
    x = np.zeros((2, 7, 6), "float32")
    got = np.asarray(ksa.SinePositionEncoding(max_wavelength=100)(x, start_index=3))
    positions = np.arange(3, 10)[:, None].astype(np.float64)
    expected = np.zeros((7, 6))
    for i in range(0, 6, 2):
        angle = positions[:, 0] / 100 ** (i / 6)
        expected[:, i], expected[:, i + 1] = np.sin(angle), np.cos(angle)
    np.testing.assert_allclose(got[1], expected, atol=1e-5)


def test_position_embedding_slices_from_start_index():
    layer = ksa.PositionEmbedding(10)
    full = np.asarray(layer(np.zeros((1, 10, 4), "float32")))
    part = np.asarray(layer(np.zeros((2, 3, 4), "float32"), start_index=4))
    np.testing.assert_array_equal(part[1], full[0, 4:7])


def test_token_and_position_embedding_values_and_mask():
    layer = ksa.TokenAndPositionEmbedding(10, 5, 4, mask_zero=True)
    ids = np.array([[3, 1, 0, 0, 0]])
    out = np.asarray(layer(ids))
    tokens = layer.token_embedding.embeddings.numpy()
    positions = layer.position_embedding.position_embeddings.numpy()
    np.testing.assert_allclose(out[0], tokens[ids[0]] + positions, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(layer.compute_mask(ids)), ids != 0)


def test_patch_embedding_matches_reference():
    images = np.random.default_rng(0).random((2, 8, 12, 3)).astype("float32")
    layer = ksa.PatchEmbedding(4, 5)
    out = np.asarray(layer(images))
    assert out.shape == (2, 1 + 6, 5)
    kernel = layer.projection.kernel.numpy().astype(np.float64)  # (4, 4, 3, 5)
    patches = images.reshape(2, 2, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 4, 4, 3)
    expected = np.einsum("bnijc,ijcd->bnd", patches, kernel) + layer.projection.bias.numpy()
    expected = expected + layer.position_embeddings.numpy()[0, 1:]
    np.testing.assert_allclose(out[:, 1:], expected, atol=1e-5)
    np.testing.assert_allclose(out[:, 0], np.broadcast_to(layer.position_embeddings.numpy()[0, 0], (2, 5)), atol=1e-6)


@pytest.mark.parametrize("attention", ["multi_head", "local_window", "additive", "self_attention"])
@pytest.mark.parametrize("normalize_first", [False, True])
def test_encoder_block_ignores_padding_and_passes_mask(rng, attention, normalize_first):
    block = ksa.TransformerEncoderBlock(2, 16, attention=attention, window_size=3,
                                        normalize_first=normalize_first)
    ids = np.array([[4, 5, 6, 7, 0, 0], [1, 2, 3, 0, 0, 0]])
    embedding = keras.layers.Embedding(10, 8, mask_zero=True)
    x = embedding(ids)
    out = np.asarray(block(x))
    perturbed = np.asarray(x) + np.where((ids == 0)[..., None], 50.0, 0.0).astype("float32")
    other = np.asarray(block(perturbed, padding_mask=ids != 0))
    np.testing.assert_allclose(out[ids != 0], other[ids != 0], atol=1e-4)
    inputs = keras.Input((6,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(block(embedding(inputs)))
    expected = np.stack([out[b][ids[b] != 0].mean(0) for b in range(2)])
    np.testing.assert_allclose(keras.Model(inputs, pooled).predict(ids, verbose=0), expected, atol=1e-5)


def test_encoder_block_causal_matches_reference_attention_path(rng):
    """Causal: output i is unchanged by any change at positions > i."""
    block = ksa.TransformerEncoderBlock(2, 16, attention="multi_head")
    x = rng.normal(size=(1, 6, 8)).astype("float32")
    changed = x.copy()
    changed[:, 4:] += 10
    a = np.asarray(block(x, use_causal_mask=True))
    b = np.asarray(block(changed, use_causal_mask=True))
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert not np.allclose(a[:, 4:], b[:, 4:])


@pytest.mark.parametrize("with_encoder", [True, False])
def test_cached_decoding_equals_full_decoding(rng, with_encoder):
    block = ksa.TransformerDecoderBlock(num_heads=2, intermediate_dim=16)
    target = rng.normal(size=(2, 7, 8)).astype("float32")
    source = rng.normal(size=(2, 5, 8)).astype("float32") if with_encoder else None
    full = np.asarray(block(target, source))

    cache = block.empty_self_attention_cache(2, 7)
    cross = block.cross_attention_cache_for(source) if with_encoder else None
    steps = []
    # Three positions written at once (a prompt, causal among themselves),
    # then one per step (no mask: the newest query sees every filled key).
    for start, end in [(0, 3)] + [(t, t + 1) for t in range(3, 7)]:
        out, cache, cross = run_as_a_step(
            lambda step, cache, cross, start=start: block(
                step, self_attention_cache=cache, self_attention_cache_update_index=start,
                cross_attention_cache=cross),
            target[:, start:end], cache, cross)
        steps.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_a_decoder_stacks_cross_attention_caches_come_from_one_matmul_and_equal_each_blocks(rng):
    blocks = [ksa.TransformerDecoderBlock(num_heads=2, intermediate_dim=16) for _ in range(3)]
    target = rng.normal(size=(2, 4, 8)).astype("float32")
    source = rng.normal(size=(2, 5, 8)).astype("float32")
    for block in blocks:
        block(target, source)
    fused = ksa.TransformerDecoderBlock.cross_attention_caches(blocks, source)
    assert len(fused) == 3
    for block, cache in zip(blocks, fused):
        np.testing.assert_allclose(np.asarray(cache),
                                   np.asarray(block.cross_attention_cache_for(source)), atol=1e-6)


def test_cached_cross_attention_hides_source_padding(rng):
    """With a padded source, cached decoding still equals full decoding: the
    encoder padding mask applies to the cross-attention cache too."""
    block = ksa.TransformerDecoderBlock(num_heads=2, intermediate_dim=16)
    target = rng.normal(size=(2, 4, 8)).astype("float32")
    source = rng.normal(size=(2, 6, 8)).astype("float32")
    source_mask = np.array([[True] * 6, [True, True, False, False, False, False]])
    full = np.asarray(block(target, source, encoder_padding_mask=source_mask))

    cache = block.empty_self_attention_cache(2, 4)
    cross = block.cross_attention_cache_for(source)
    steps = []
    for t in range(4):
        out, cache, cross = block(
            target[:, t:t + 1], encoder_padding_mask=source_mask,
            self_attention_cache=cache, self_attention_cache_update_index=t,
            cross_attention_cache=cross,
        )
        steps.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    # What the padded source positions hold does not matter.
    changed = source.copy()
    changed[1, 2:] += 100.0
    np.testing.assert_allclose(
        np.asarray(block(target, changed, encoder_padding_mask=source_mask)), full, atol=1e-5
    )


def test_cross_attention_scores_skip_source_padding(rng):
    block = ksa.TransformerDecoderBlock(num_heads=2, intermediate_dim=16)
    target = rng.normal(size=(2, 3, 8)).astype("float32")
    source = rng.normal(size=(2, 5, 8)).astype("float32")
    source_mask = np.array([[True] * 5, [True, True, False, False, False]])
    block(target, source)
    scores = np.asarray(block.cross_attention_scores(target, source,
                                                     encoder_padding_mask=source_mask))
    assert scores.shape == (2, 2, 3, 5)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert (scores[1, :, :, 2:] == 0).all()
    with pytest.raises(ValueError, match="no cross-attention"):
        decoder_only = ksa.TransformerDecoderBlock(num_heads=2, intermediate_dim=16)
        decoder_only(target)
        decoder_only.cross_attention_scores(target, source)


def test_cached_step_attends_over_filled_prefix_only(rng):
    """Step t reads t + 1 cached keys, not the whole cache: the work is O(t)."""
    layer = ksa.MultiHead(2, 4)
    x = rng.normal(size=(1, 1, 8)).astype("float32")
    cache = np.zeros((1, 2, 100, 2, 4), "float32")
    for t in (0, 5, 42):
        _, scores, cache = layer(x, cache=cache, cache_update_index=t,
                                 return_attention_scores=True)
        assert scores.shape == (1, 2, 1, t + 1)


def test_cached_decoding_step_compiles_with_a_traced_index(rng):
    """One compiled decoding step (XLA: `tf.function(jit_compile=True)`,
    `jax.jit`) takes the cache index as a tensor, and step by step equals
    the whole target at once."""
    block = ksa.TransformerDecoderBlock(num_heads=2, intermediate_dim=16)
    target = rng.normal(size=(1, 4, 8)).astype("float32")
    full = np.asarray(block(target))
    step = compiled(lambda token, cache, index: block(
        token, self_attention_cache=cache, self_attention_cache_update_index=index)[:2])
    cache = block.empty_self_attention_cache(1, 4)
    outputs = []
    for t in range(4):
        out, cache = step(target[:, t:t + 1], cache, keras.ops.convert_to_tensor(t, "int32"))
        outputs.append(numpy(out)[:, 0])
    np.testing.assert_allclose(np.stack(outputs, axis=1), full, atol=1e-5)


@tensorflow_only
def test_cached_decoding_inside_tf_function(rng):
    """The decoding loop traces into a graph with a tensor cache index."""
    import tensorflow as tf

    block = ksa.TransformerDecoderBlock(num_heads=2, intermediate_dim=16)
    target = rng.normal(size=(1, 4, 8)).astype("float32")
    full = np.asarray(block(target))

    @tf.function
    def decode(sequence):
        cache = block.empty_self_attention_cache(1, 4)
        outputs = tf.TensorArray(tf.float32, size=4)
        for t in tf.range(4):
            out, cache, _ = block(sequence[:, t:t + 1], self_attention_cache=cache,
                                  self_attention_cache_update_index=t)
            outputs = outputs.write(t, out[:, 0])
        return tf.transpose(outputs.stack(), (1, 0, 2))

    np.testing.assert_allclose(decode(target).numpy(), full, atol=1e-5)


def test_decoder_padding_mask_from_keras_mask(rng):
    block = ksa.TransformerDecoderBlock(num_heads=2, intermediate_dim=16)
    ids = np.array([[1, 2, 3, 0]])
    source_ids = np.array([[4, 5, 0, 0, 0]])
    embedding = keras.layers.Embedding(10, 8, mask_zero=True)
    source = embedding(source_ids)
    out = np.asarray(block(embedding(ids), source))
    # Changing padded source positions changes nothing.
    changed_source = np.asarray(source) + np.array([0, 0, 9, 9, 9], "float32")[None, :, None]
    changed = np.asarray(block(embedding(ids), changed_source,
                               decoder_padding_mask=ids != 0,
                               encoder_padding_mask=source_ids != 0))
    np.testing.assert_allclose(out[0, :3], changed[0, :3], atol=1e-5)
