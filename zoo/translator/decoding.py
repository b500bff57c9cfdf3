"""Beam search (and greedy search, its `beam_size=1`) inside one TF graph.

keras-hub's `BeamSampler` traces into a graph, but it has no length penalty
and keeps extending a beam after its end token, so a finished hypothesis
keeps losing log-probability to tokens that are never shown; its
`GreedySampler` stops only when every sequence has ended. This search keeps
finished hypotheses apart, scores them with the GNMT length penalty
`((5 + length) / 6) ** alpha`, and stops each sentence once it holds
`beam_size` finished hypotheses (a sentence that is done no longer changes;
the loop ends when all are done or at `max_length`). With `beam_size=1` a
sentence is done at its first end token: greedy decoding, exactly.

The model enters through `step(tokens, index, state)`: `tokens` are the
`(N, max_length + 1)` hypotheses so far (start token first), `index` the
position whose next token is wanted, and `state` a nested structure of
`(N, ...)` tensors (the decoder's key/value caches) that the search reorders
with the beams. It returns `(log_probabilities (N, V) float32, state)`.
"""

import tensorflow as tf

from keras_selfattn.layers.base_attention import check_int

NEGATIVE = -1e9  # a finite "minus infinity": -inf - -inf would give NaN


def length_penalty(length, alpha):
    """The GNMT length normalization `((5 + length) / 6) ** alpha`."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def beam_search(step, state, batch_size, beam_size, max_length, start_id, end_id,
                alpha=0.6):
    """Decodes `batch_size` sentences; returns `(tokens, scores)`.

    Args:
        step: the model's step function (see the module docstring). It is
            called on `N = batch_size * beam_size` rows, beam-major within
            each sentence.
        state: the initial state, `(N, ...)` tensors.
        batch_size: a scalar int32 tensor.
        beam_size: a Python int >= 1.
        max_length: a Python int, the most tokens generated (end included).
        start_id, end_id: the start and end token ids.
        alpha: the length penalty exponent (0 compares raw log-probabilities).

    Returns:
        `tokens`: `(batch_size, max_length)` int32, the best hypothesis of
        each sentence without its start token; the first `end_id` ends it
        (positions after it are `end_id` too). `scores`: `(batch_size,)`,
        its summed log-probability divided by the length penalty.
    """
    check_int("beam_size", beam_size)
    check_int("max_length", max_length)
    beams, width = beam_size, max_length + 1
    rows = batch_size * beams
    positions = tf.range(width)
    rank = tf.range(2 * beams)

    alive = tf.fill([batch_size, beams, width], tf.constant(end_id, tf.int32))
    alive = tf.where(positions == 0, tf.constant(start_id, tf.int32), alive)
    # Only the first beam is live at first, so the first step's candidates
    # are not the same token counted `beam_size` times.
    alive_log_probs = tf.tile(
        tf.constant([[0.0] + [NEGATIVE] * (beams - 1)]), [batch_size, 1]
    )
    finished = alive
    finished_scores = tf.fill([batch_size, beams], NEGATIVE)
    done = tf.zeros([batch_size], tf.bool)

    def gather(tensor, indices):
        return tf.gather(tensor, indices, batch_dims=1)

    def body(index, alive, alive_log_probs, finished, finished_scores, done, state):
        log_probs, state = step(tf.reshape(alive, [rows, width]), index, state)
        vocabulary = tf.shape(log_probs)[-1]
        candidates = alive_log_probs[:, :, None] + tf.reshape(
            log_probs, [batch_size, beams, vocabulary]
        )
        top_log_probs, top = tf.math.top_k(
            tf.reshape(candidates, [batch_size, beams * vocabulary]), 2 * beams
        )
        source_beam, token = top // vocabulary, top % vocabulary
        extended = tf.where(
            positions == index + 1, token[:, :, None], gather(alive, source_beam)
        )
        ends = tf.equal(token, end_id)

        # Ended candidates among the best `beam_size` become finished.
        ended_scores = tf.where(
            ends & (rank < beams), top_log_probs / length_penalty(index + 1, alpha), NEGATIVE
        )
        pool_scores, pick = tf.math.top_k(
            tf.concat([finished_scores, ended_scores], 1), beams
        )
        pool = gather(tf.concat([finished, extended], 1), pick)
        # A sentence that is done keeps its finished hypotheses.
        finished = tf.where(done[:, None, None], finished, pool)
        finished_scores = tf.where(done[:, None], finished_scores, pool_scores)

        # The best `beam_size` candidates that did not end stay alive.
        alive_log_probs, pick = tf.math.top_k(tf.where(ends, NEGATIVE, top_log_probs), beams)
        alive = gather(extended, pick)
        if beams > 1:
            parent = gather(source_beam, pick) + tf.range(batch_size)[:, None] * beams
            parent = tf.reshape(parent, [rows])
            state = tf.nest.map_structure(lambda s: tf.gather(s, parent), state)
        done = done | tf.reduce_all(finished_scores > NEGATIVE / 2, axis=1)
        return index + 1, alive, alive_log_probs, finished, finished_scores, done, state

    def cond(index, *loop_vars):
        return tf.logical_not(tf.reduce_all(loop_vars[4]))

    _, alive, alive_log_probs, finished, finished_scores, done, _ = tf.while_loop(
        cond, body,
        (tf.constant(0), alive, alive_log_probs, finished, finished_scores, done, state),
        maximum_iterations=max_length,
    )
    # A sentence that never finished `beam_size` hypotheses within
    # `max_length` also competes with its live ones, cut at the limit.
    alive_scores = tf.where(
        done[:, None], NEGATIVE, alive_log_probs / length_penalty(max_length, alpha)
    )
    scores = tf.concat([finished_scores, alive_scores], 1)
    best = tf.argmax(scores, axis=1, output_type=tf.int32)
    tokens = gather(tf.concat([finished, alive], 1), best)[:, 1:]
    return tokens, gather(scores, best)


def step_functions(backbone, project, encoded, source_mask, beam_size, max_length,
                   use_cache=True):
    """`(initial state, step)` for `beam_search` over the encoded sources,
    rows repeated per beam.

    Args:
        backbone: a `TranslatorBackbone`.
        project: `(B, T, hidden_dim)` -> `(B, T, V)` logits (the task's head).
        encoded, source_mask: `backbone.encode`'s outputs.
        beam_size, max_length: as `beam_search`'s.
        use_cache: the state is each decoder block's self-attention cache,
            `max_length` positions long; without it there is none and each
            step recomputes the whole prefix (for tests and benchmarks).
    """
    encoded = tf.repeat(encoded, beam_size, axis=0)
    source_mask = tf.repeat(source_mask, beam_size, axis=0)
    if not use_cache:
        def recompute(tokens, index, state):
            # The whole prefix again at every step: what the cache saves.
            prefix = tokens[:, :index + 1]
            logits = project(backbone.decode(prefix, encoded, source_mask))[:, -1]
            return tf.nn.log_softmax(logits), state

        return (), recompute

    cross_caches = backbone.cross_attention_caches(encoded)
    state = backbone.empty_caches(tf.shape(encoded)[0], max_length)

    def cached(tokens, index, caches):
        # Indexed, not sliced, so the one-token length is known while
        # tracing and the attention skips the causal mask.
        token = tokens[:, index][:, None]
        x, caches = backbone.decode_step(token, index, source_mask, caches, cross_caches)
        return tf.nn.log_softmax(project(x)[:, 0]), caches

    return state, cached
