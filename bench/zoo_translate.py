"""Translator: decoding speed, training throughput and BLEU against keras-hub.

- Decoding: target tokens/s for 32 and 128 sentences decoded to exactly
  40 tokens (the target length; the end token is disabled), at beam 1 and 4:
  our search with the decoder's key/value cache, the same search
  recomputing the whole prefix at every step, and keras-hub's
  `GreedySampler` / `BeamSampler` on the keras-hub model, driven as in the
  keras.io English-Spanish example (the prefix recomputed at every step).
- Training: sentence pairs/s of `fit` for `Translator` and for the keras-hub
  model of the same sizes (`TokenAndPositionEmbedding` +
  `TransformerEncoder`/`TransformerDecoder`, dense output), on the same
  token-id batches in the same run.
- Quality: corpus BLEU on the fixed held-out 500 pairs of the embedded
  English -> German corpus. Our recipe trains for `--epochs`; the keras-hub
  model then trains for the same wall time (same batches, optimizer and
  schedule, plain cross-entropy over real tokens as in the keras.io
  example) and decodes greedily with `GreedySampler`.

Usage: `python bench/zoo_translate.py [--quick] [--decode-only]`; writes its
section of RESULTS.md (`--decode-only`: a section of its own).
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from results import dataset_fit_throughput, update_section  # noqa: E402
from zoo import Translator, report  # noqa: E402
from zoo.training import warmup_cosine  # noqa: E402
from zoo.translator.decoding import beam_search  # noqa: E402
from zoo.translator.preprocessor import END_ID, START_ID  # noqa: E402
from zoo.translator.train import DEFAULT_ARCHITECTURE, load_training_data  # noqa: E402

BATCH = 64


def keras_hub_translator(a):
    """The keras.io-example translator at our sizes."""
    source = keras.Input((None,), dtype="int32", name="encoder_token_ids")
    target = keras.Input((None,), dtype="int32", name="decoder_token_ids")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        a["vocabulary_size"], a["source_sequence_length"], a["hidden_dim"], mask_zero=True)(source)
    for _ in range(a["num_encoder_layers"]):
        x = keras_hub.layers.TransformerEncoder(
            a["intermediate_dim"], a["num_heads"], dropout=a["dropout"], activation="gelu")(x)
    y = keras_hub.layers.TokenAndPositionEmbedding(
        a["vocabulary_size"], a["target_sequence_length"], a["hidden_dim"], mask_zero=True)(target)
    for _ in range(a["num_decoder_layers"]):
        y = keras_hub.layers.TransformerDecoder(
            a["intermediate_dim"], a["num_heads"], dropout=a["dropout"], activation="gelu")(y, x)
    logits = keras.layers.Dense(a["vocabulary_size"], dtype="float32")(y)
    return keras.Model({"encoder_token_ids": source, "decoder_token_ids": target}, logits)


def compile_like_ours(model, steps):
    model.compile(
        optimizer=keras.optimizers.AdamW(warmup_cosine(2e-3, steps), weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                        reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def keras_hub_generate(model, source_ids, length, sampler, end_id=END_ID):
    """keras.io-style decoding: the sampler asks for the next token's logits,
    and the model recomputes the whole prefix to give them."""
    batch = tf.shape(source_ids)[0]
    prompt = tf.concat([tf.fill([batch, 1], START_ID),
                        tf.zeros([batch, length], tf.int32)], axis=1)

    # BeamSampler repeats each prompt row once per beam, next to each other.
    sources = tf.repeat(source_ids, getattr(sampler, "num_beams", 1), axis=0)

    def next_logits(prompt, cache, index):
        logits = model({"encoder_token_ids": sources, "decoder_token_ids": prompt[:, :index]})
        return logits[:, index - 1], None, cache

    stop = None if end_id is None else [end_id]
    return sampler(next_logits, prompt, index=1, stop_token_ids=stop)[:, 1:]


def tokens_per_second(function, tokens, repeats=3):
    function()  # traces
    best = min(_timed(function) for _ in range(repeats))
    return tokens / best


def _timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def decoding_speed(translator, hub_model, sources, length):
    """`{(method, beam): tokens/s}` decoding `len(sources)` sentences to `length` tokens."""
    source_ids = translator.preprocess(tf.constant(sources))
    tokens = len(sources) * length
    rates = {}
    for beam in (1, 4):
        for method, use_cache in (("cache", True), ("recompute", False)):
            @tf.function
            def ours(use_cache=use_cache, beam=beam):
                encoded, mask = translator.encode(source_ids)
                state, step = translator.step_functions(encoded, mask, beam, length, use_cache)
                # end_id=-1: no sentence ends, every one decodes `length` tokens.
                return beam_search(step, state, tf.shape(source_ids)[0], beam, length,
                                   START_ID, -1)

            rates[(method, beam)] = tokens_per_second(ours, tokens)
        sampler = (keras_hub.samplers.GreedySampler() if beam == 1
                   else keras_hub.samplers.BeamSampler(num_beams=beam))

        @tf.function
        def hub(sampler=sampler):
            return keras_hub_generate(hub_model, source_ids, length, sampler, end_id=None)

        rates[("keras-hub sampler", beam)] = tokens_per_second(hub, tokens)
    return rates


def environment():
    return (f"Run {datetime.date.today()} on {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} CPU cores, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
            f"keras-hub {keras_hub.__version__}.")


def decoding_table(ours, hub, sentences, length, batch_sizes):
    """Markdown lines: tokens/s decoding `batch` sentences to exactly `length`
    tokens, for each batch size and beam."""
    lines = [
        f"Decoding held-out sentences to exactly {length} target tokens (tokens/s, best of 3; "
        "untrained weights, as speed does not depend on them):",
        "",
        "| sentences | beam | ours, KV cache | ours, recomputing the prefix | cache speed-up | "
        "keras-hub sampler (keras.io style) | ours / keras-hub |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in batch_sizes:
        rates = decoding_speed(ours, hub, sentences[:batch], length)
        for beam in (1, 4):
            cached, recomputed = rates[("cache", beam)], rates[("recompute", beam)]
            sampler = rates[("keras-hub sampler", beam)]
            lines.append(f"| {batch} | {beam} | {cached:.0f} | {recomputed:.0f} | "
                         f"{cached / recomputed:.1f}x | {sampler:.0f} | {cached / sampler:.1f}x |")
    return lines


def main(quick=False, decode_only=False):
    keras.utils.set_random_seed(0)
    architecture = dict(DEFAULT_ARCHITECTURE)
    train, validation, test, _ = load_training_data("gramps")
    if quick:
        train = (train[0][:600], train[1][:600])
        test = (test[0][:100], test[1][:100])
    epochs = 2 if quick else 30
    steps = epochs * -(-len(train[0]) // BATCH)

    ours = Translator.from_training_pairs(*train, **architecture)
    # Both models sized to the learned vocabularies.
    architecture["vocabulary_size"] = ours.vocabulary_size
    hub = keras_hub_translator(architecture)
    batches = ours.dataset(*train, batch_size=BATCH, shuffle=True, training=True)

    # Decoding speed (untrained weights: speed does not depend on them).
    length = architecture["target_sequence_length"]
    decode_lines = decoding_table(ours, hub, list(test[0]), length, (32,) if quick else (32, 128))
    print("\n".join(decode_lines))
    if decode_only:
        if not quick:
            update_section("Translator decoding", "\n".join([environment(), "", *decode_lines]))
        return

    # Training throughput on the same cached batches (filled before timing),
    # measured in turns so that neither model gets the quieter minutes.
    fixed = batches.take(40).cache()
    examples = sum(int(x["encoder_token_ids"].shape[0]) for x, _, _ in fixed)
    ours.compile(optimizer=keras.optimizers.AdamW(1e-3))
    compile_like_ours(hub, steps)
    ours_rate = hub_rate = 0.0
    for _ in range(1 if quick else 3):
        ours_rate = max(ours_rate, dataset_fit_throughput(ours, fixed, examples, repeats=1))
        hub_rate = max(hub_rate, dataset_fit_throughput(hub, fixed, examples, repeats=1))
    print(f"training: ours {ours_rate:.0f} pairs/s, keras-hub {hub_rate:.0f} pairs/s")

    # Quality for the same wall time, from fresh weights.
    keras.utils.set_random_seed(0)
    ours = Translator(**architecture, source_vocabulary=ours.source_vocabulary,
                      target_vocabulary=ours.target_vocabulary)
    ours.compile(optimizer=keras.optimizers.AdamW(warmup_cosine(2e-3, steps),
                                                  weight_decay=0.01))
    start = time.perf_counter()
    ours.fit(*train, epochs=epochs, batch_size=BATCH, verbose=2)
    budget = time.perf_counter() - start
    keras.utils.set_random_seed(0)
    hub = keras_hub_translator(architecture)
    compile_like_ours(hub, steps)
    start, hub_epochs = time.perf_counter(), 0
    while time.perf_counter() - start < budget and hub_epochs < 3 * epochs:
        hub.fit(batches, epochs=hub_epochs + 1, initial_epoch=hub_epochs, verbose=2)
        hub_epochs += 1
    hub_time = time.perf_counter() - start

    bleu = {f"ours beam {k}": report.corpus_bleu(test[1], ours.translate(test[0], beam_size=k))
            for k in (1, 4)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def hub_translate(texts):
        ids = keras_hub_generate(hub, ours.preprocess(texts), length,
                                 keras_hub.samplers.GreedySampler())
        return ours.detokenize(ids)

    hub_translations = [t.decode() for start_ in range(0, len(test[0]), 64)
                        for t in hub_translate(tf.constant(test[0][start_:start_ + 64])).numpy()]
    bleu["keras-hub greedy"] = report.corpus_bleu(test[1], hub_translations)
    for name, value in bleu.items():
        print(f"BLEU {name}: {100 * value:.2f}")

    if quick:
        return
    a = architecture
    lines = [
        f"{environment()} Sizes (both models): {a['num_encoder_layers']}+"
        f"{a['num_decoder_layers']} layers, width {a['hidden_dim']}, {a['num_heads']} heads, "
        f"feed-forward {a['intermediate_dim']}, vocabularies of {a['vocabulary_size']}, "
        f"{a['source_sequence_length']}/{a['target_sequence_length']} tokens; ours ties the "
        f"output projection to the target embedding ({ours.count_params():,} parameters "
        f"against {hub.count_params():,}).",
        "",
        *decode_lines,
    ]
    lines += [
        "",
        f"Training (the same 40 batches of {BATCH} pairs, bucketed by length, best of 3 epochs "
        f"taken in turns): ours "
        f"{ours_rate:.0f} pairs/s, keras-hub {hub_rate:.0f} pairs/s: "
        f"**{ours_rate / hub_rate:.2f}x**.",
        "",
        f"Quality on the fixed held-out 500 English -> German pairs: ours trained {epochs} "
        f"epochs in {budget:.0f} s; keras-hub trained {hub_epochs} epochs in {hub_time:.0f} s "
        "(the same wall time, rounded up to whole epochs).",
        "",
        "| model | corpus BLEU |",
        "|---|---|",
        *[f"| {name} | {100 * value:.2f} |" for name, value in bleu.items()],
    ]
    update_section("Translator", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    parser.add_argument("--decode-only", action="store_true",
                        help="only the decoding speed (its own section of RESULTS.md)")
    arguments = parser.parse_args()
    main(arguments.quick, arguments.decode_only)
