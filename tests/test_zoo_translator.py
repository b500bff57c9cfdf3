"""zoo.Translator: training, decoding with the cache, presets, export."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import (
    REPO_ROOT, TINY_TRANSLATOR, number_pairs, serve_in_clean_process, xla_only_ops,
)
from zoo import Translator
from zoo.translator.decoding import beam_search, length_penalty
from zoo.translator.preprocessor import END_ID, PAD_ID, START_ID
from zoo.translator.translator import SmoothedSequenceCrossEntropy

TINY = TINY_TRANSLATOR


@pytest.fixture(scope="module")
def tiny_translator():
    keras.utils.set_random_seed(0)
    sources, targets = number_pairs(600, seed=0)
    model = Translator(**TINY)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    model.fit(sources, targets, epochs=12, batch_size=32, verbose=0)
    return model


def sequence_log_probability(model, source, target_ids):
    """float64 log p(target_ids | source) from full teacher-forced passes."""
    source_ids = model.preprocess(tf.constant([source]))
    decoder_in = np.full((1, model.target_sequence_length), PAD_ID, "int32")
    decoder_in[0, 0] = START_ID
    decoder_in[0, 1:len(target_ids)] = target_ids[:-1]
    logits = model({"encoder_token_ids": source_ids, "decoder_token_ids": decoder_in})
    logits = np.asarray(logits, "float64")[0, :len(target_ids)]
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
    return float(sum(log_probs[i, t] for i, t in enumerate(target_ids)))


def ended(ids):
    """Token ids up to and including the first end token."""
    ids = list(np.asarray(ids))
    return ids[:ids.index(END_ID) + 1] if END_ID in ids else ids


def test_learns_the_task_and_translates_strings(tiny_translator):
    sources, targets = number_pairs(40, seed=1)
    translations = tiny_translator.translate(sources)
    assert all(isinstance(t, str) for t in translations)
    correct = np.mean([t == r for t, r in zip(translations, targets)])
    assert correct > 0.8, list(zip(sources, translations))[:5]
    beam = tiny_translator.translate(sources, beam_size=4)
    assert np.mean([t == r for t, r in zip(beam, targets)]) > 0.8


def test_greedy_equals_an_uncached_reference_loop(tiny_translator):
    """Beam 1 is greedy: the argmax of a full teacher-forced pass, token by
    token, until the end token."""
    sources, _ = number_pairs(6, seed=2)
    ids, _ = tiny_translator.decode_ids(tiny_translator.preprocess(tf.constant(sources)), 1)
    for source, row in zip(sources, np.asarray(ids)):
        source_ids = tiny_translator.preprocess(tf.constant([source]))
        prefix = [START_ID]
        while len(prefix) <= tiny_translator.target_sequence_length:
            decoder_in = np.array([prefix], "int32")
            logits = tiny_translator({"encoder_token_ids": source_ids,
                                      "decoder_token_ids": decoder_in})
            prefix.append(int(np.argmax(logits[0, -1])))
            if prefix[-1] == END_ID:
                break
        assert ended(row) == prefix[1:]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_cached_decoding_equals_recomputing_the_prefix(tiny_translator, beam_size):
    # Sentences of different lengths in one batch, so sources are padded.
    sources = ["one", "two three four five six", "seven eight", "", "nine ten one two"]
    source_ids = tiny_translator.preprocess(tf.constant(sources))
    cached = tiny_translator.decode_ids(source_ids, beam_size)
    recomputed = tiny_translator.decode_ids(source_ids, beam_size, use_cache=False)
    np.testing.assert_array_equal(cached[0], recomputed[0])
    np.testing.assert_allclose(cached[1], recomputed[1], atol=1e-4)


def test_beam_search_never_scores_below_greedy_and_reports_true_scores(tiny_translator):
    sources = number_pairs(12, seed=3)[0] + ["one two three four five six seven"]
    source_ids = tiny_translator.preprocess(tf.constant(sources))
    alpha = 0.6
    greedy, _ = tiny_translator.decode_ids(source_ids, 1, length_penalty=alpha)
    beam, beam_scores = tiny_translator.decode_ids(source_ids, 4, length_penalty=alpha)
    for source, g, b, reported in zip(sources, np.asarray(greedy), np.asarray(beam),
                                      np.asarray(beam_scores)):
        def score(ids):
            ids = ended(ids)
            penalty = ((5 + len(ids)) / 6) ** alpha
            return sequence_log_probability(tiny_translator, source, ids) / penalty

        assert score(b) >= score(g) - 1e-4, source
        assert reported == pytest.approx(score(b), abs=1e-3)


def test_each_sentence_decodes_as_it_would_alone(tiny_translator):
    sources = ["one two", "three four five six seven eight nine", ""]
    together = tiny_translator.translate(sources, beam_size=3)
    alone = [tiny_translator.translate([s], beam_size=3)[0] for s in sources]
    assert together == alone


def test_empty_and_very_long_sources_are_handled(tiny_translator):
    long = " ".join(["one"] * 500)
    translations = tiny_translator.translate(["", "   ", long], beam_size=2)
    assert len(translations) == 3
    ids = np.asarray(tiny_translator.preprocess(tf.constant(["", long])))
    assert ids.shape == (2, TINY["source_sequence_length"])  # the longest, truncated
    assert ids[0, 0] == END_ID and (ids[0, 1:] == PAD_ID).all()
    assert ids[1, -1] == END_ID and (ids[1] != PAD_ID).all()  # truncated, still ended
    assert len(translations[0].split()) <= 6


def test_max_length_bounds_the_translation(tiny_translator):
    source_ids = tiny_translator.preprocess(tf.constant(["one two three four five six"]))
    ids, _ = tiny_translator.decode_ids(source_ids, 2, max_length=3)
    assert np.asarray(ids).shape == (1, 3)
    with pytest.raises(ValueError, match="max_length"):
        tiny_translator.translate(["one"], max_length=13)


def test_beam_search_stops_each_sentence_at_its_end_token():
    """A toy model whose next token is fixed per row: row 0 ends at once,
    row 1 never; the search still returns both, row 0 unchanged by the
    steps row 1 keeps taking."""
    vocabulary = 6
    table = tf.constant([[END_ID] * 8, [4] * 8])

    def step(tokens, index, state):
        rows = tf.shape(tokens)[0]
        wanted = tf.repeat(table[:, index], rows // 2)
        return tf.math.log(tf.one_hot(wanted, vocabulary) * 0.9 + 0.1 / vocabulary), state

    tokens, scores = beam_search(step, (), tf.constant(2), 2, 5, START_ID, END_ID, 0.6)
    tokens = np.asarray(tokens)
    assert tokens[0, 0] == END_ID
    assert list(tokens[1]) == [4, 4, 4, 4, 4]  # hit max_length without ending
    expected = np.log(0.9 + 0.1 / vocabulary) / float(length_penalty(1, 0.6))
    assert float(scores[0]) == pytest.approx(expected, rel=1e-5)


def test_loss_masks_padding_and_smooths_labels(rng):
    """Against a float64 reference; logits at padded positions change nothing."""
    smoothing = 0.1
    targets = np.array([[5, 7, END_ID, 0, 0], [4, END_ID, 0, 0, 0]])
    weights = (targets != 0).astype("float32")
    logits = rng.normal(size=(2, 5, 9)).astype("float32")
    loss = SmoothedSequenceCrossEntropy(smoothing)
    value = float(loss(targets, logits, sample_weight=weights))

    z = logits.astype("float64")
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    per_token = -(1 - smoothing) * picked - smoothing * log_probs.mean(-1)
    expected = (per_token * weights).sum() / weights.sum()
    assert value == pytest.approx(expected, rel=1e-5)

    changed = logits.copy()
    changed[targets == 0] = rng.normal(size=changed[targets == 0].shape) * 50
    assert float(loss(targets, changed, sample_weight=weights)) == pytest.approx(value, rel=1e-6)


def test_fit_takes_lists_arrays_and_tf_data(tiny_translator):
    sources, targets = number_pairs(64, seed=4)
    model = Translator(**TINY, source_vocabulary=tiny_translator.source_vocabulary,
                       target_vocabulary=tiny_translator.target_vocabulary)
    model.compile()
    for data in (dict(x=np.array(sources), y=np.array(targets)),
                 dict(x=tf.data.Dataset.from_tensor_slices((sources, targets))),
                 dict(x=tf.data.Dataset.from_tensor_slices((sources, targets)).batch(16))):
        history = model.fit(**data, epochs=1, batch_size=16, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    result = model.evaluate(sources, targets, verbose=0, return_dict=True)
    assert set(result) >= {"loss", "accuracy"}


def test_vocabularies_are_learned_shared_or_separate():
    sources, targets = number_pairs(100, seed=5)
    separate = Translator(**TINY)
    separate.adapt(sources, targets)
    assert "fünf" in separate.target_vocabulary and "fünf" not in separate.source_vocabulary
    shared = Translator(**TINY, shared_vocabulary=True)
    shared.adapt(sources, targets)
    assert shared.source_vocabulary == shared.target_vocabulary
    assert {"five", "fünf"} <= set(shared.source_vocabulary)


def test_untied_projection_trains_and_every_encoder_attention_works():
    sources, targets = number_pairs(64, seed=6)
    untied = Translator(**TINY, tie_embeddings=False)
    untied.compile()
    history = untied.fit(sources, targets, epochs=2, batch_size=32, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert len(untied.translate(sources[:2])) == 2
    assert untied.get_layer("output_projection").kernel.shape == (TINY["vocabulary_size"],
                                                                   TINY["hidden_dim"])[::-1]

    inputs, _, _ = untied.preprocess_pair(tf.constant(sources[:4]), tf.constant(targets[:4]))
    for attention in ("self_attention", "local_window", "additive"):
        model = Translator(**{**TINY, "attention": attention, "window_size": 3})
        logits = np.asarray(model(inputs))
        assert logits.shape[-1] == TINY["vocabulary_size"] and np.isfinite(logits).all()
        assert model.backbone.encoder_blocks[0].attention == attention


def test_bad_arguments_are_refused(tiny_translator):
    with pytest.raises(ValueError, match="target_sequence_length"):
        Translator(target_sequence_length=1)
    with pytest.raises(ValueError, match="label_smoothing"):
        Translator(**TINY, label_smoothing=1.0)
    with pytest.raises(ValueError, match="no vocabularies"):
        Translator(**TINY).translate(["one"])
    with pytest.raises(TypeError, match="single string"):
        tiny_translator.translate("one two")
    with pytest.raises(ValueError, match="beam_size"):
        tiny_translator.translate(["one"], beam_size=0)
    with pytest.raises(ValueError, match="must start with"):
        Translator(**TINY, source_vocabulary=["a", "b"], target_vocabulary=["a", "b"])


def test_a_preset_keeps_its_vocabularies_and_refuses_changed_sizes(tiny_translator, tmp_path):
    # Identical translations after the round trip: tests/test_preset_contract.py.
    tiny_translator.save_to_preset(tmp_path / "preset")
    loaded = Translator.from_preset(tmp_path / "preset")
    assert loaded.source_vocabulary == tiny_translator.source_vocabulary
    assert loaded.target_vocabulary == tiny_translator.target_vocabulary
    with pytest.raises(ValueError, match="Cannot change"):
        Translator.from_preset(tmp_path / "preset", hidden_dim=64)
    assert Translator.from_preset(tmp_path / "preset", dropout=0.3).dropout == 0.3
    weights = tmp_path / "preset" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match="corrupt or changed"):
        Translator.from_preset(tmp_path / "preset")


def test_keras_save_and_load_round_trip(tiny_translator, tmp_path):
    sources, _ = number_pairs(6, seed=8)
    tiny_translator.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.translate(sources) == tiny_translator.translate(sources)
    # Compiled as it was saved: the loss (label smoothing kept) and the optimizer's state.
    assert loaded.loss.get_config() == tiny_translator.loss.get_config()
    assert loaded.loss.label_smoothing == 0.1
    assert int(loaded.optimizer.iterations) == int(tiny_translator.optimizer.iterations) > 0
    # The vocabularies are assets in the archive, not lists in its config.
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        config = archive.read("config.json").decode()
        assets = [n for n in archive.namelist() if n.startswith("assets/")]
    assert "vocabulary" in config and "[START]" not in config
    assert {n.rsplit("/", 1)[-1] for n in assets} >= {"source_vocabulary.txt",
                                                      "target_vocabulary.txt"}


@pytest.mark.slow
def test_export_answers_rest_and_grpc_requests_with_tensorflow_alone(tiny_translator, tmp_path):
    sources = number_pairs(6, seed=9)[0] + ["", "one two thr\u00e9e"]
    version = tiny_translator.export(tmp_path / "served", beam_size=3)
    # The decoder's cache writes must not lower to XlaDynamicUpdateSlice,
    # which runs only through XLA's on-demand compiler.
    assert xla_only_ops(version) == []
    expected = tiny_translator.translate(sources, beam_size=3)
    (tmp_path / "case.json").write_text(json.dumps({"sources": sources, "expected": expected}))
    out = serve_in_clean_process(
        f"""
        import base64, json, sys
        sys.path.insert(0, {str(REPO_ROOT / "zoo")!r})
        import serving_client  # imports tensorflow and tensorflow_text only
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        case = json.load(open("case.json"))
        sources, expected = case["sources"], case["expected"]
        loaded = serving_client.load("served")

        body = json.dumps({{"signature_name": "serving_default", "instances": sources}})
        assert json.loads(serving_client.rest_predict(loaded, body))["predictions"] == expected

        encoded = [{{"b64": base64.b64encode(s.encode()).decode()}} for s in sources]
        body = json.dumps({{"inputs": {{"text": encoded}}}})
        outputs = json.loads(serving_client.rest_predict(loaded, body))["outputs"]
        assert outputs == {{"translation": expected}}, outputs

        body = json.dumps({{"signature_name": "translate_with_scores", "instances": sources[:2]}})
        rows = json.loads(serving_client.rest_predict(loaded, body))["predictions"]
        assert [r["translation"] for r in rows] == expected[:2] and rows[0]["score"] < 0

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "translator"
        request.model_spec.signature_name = "serving_default"
        request.inputs["text"].CopyFrom(tf.make_tensor_proto(sources))
        response = predict_pb2.PredictResponse.FromString(
            serving_client.grpc_predict(loaded, request.SerializeToString()))
        got = [v.decode() for v in tf.make_ndarray(response.outputs["translation"])]
        assert got == expected, (got, expected)

        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("keras_hub", "keras_selfattn", "zoo"))
        assert not leaked, leaked
        print("served")
        """,
        cwd=tmp_path,
    )
    assert "served" in out


def test_shipped_preset_translates_held_out_pairs_and_fine_tunes():
    from zoo import report
    from zoo.datasets import load_message_pairs, split_pairs

    assert "gramps_en_de_small" in Translator.presets
    model = Translator.from_preset("gramps_en_de_small")
    metadata = json.loads((Translator.presets["gramps_en_de_small"] / "metadata.json").read_text())
    assert metadata["training"]["test_bleu_beam_4"] > 0.3
    _, (sources, references) = split_pairs(load_message_pairs("de"))
    translations = model.translate(sources[:100])
    assert report.corpus_bleu(references[:100], translations) > 0.2
    assert model.translate(["Delete the selected person"], beam_size=4)[0]

    sources, targets = number_pairs(32, seed=13)
    model.compile(optimizer=keras.optimizers.AdamW(5e-4))
    history = model.fit(sources, targets, epochs=2, batch_size=16, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert model.source_vocabulary == Translator.from_preset("gramps_en_de_small").source_vocabulary


def test_the_shipped_preset_written_before_the_backbone_class_loads_every_weight(tmp_path):
    """The shipped preset keeps its flat configuration and its weights file
    from before `TranslatorBackbone`: each weight it stores lands, unchanged,
    where the new layout keeps it, and a preset saved again in that layout
    loads to the same translations."""
    import h5py

    from zoo.translator.translator import LEGACY_WEIGHT_GROUPS

    folder = Translator.presets["gramps_en_de_small"]
    assert "backbone" not in json.loads((folder / "config.json").read_text())["config"]
    model = Translator.from_preset("gramps_en_de_small")
    model.save_to_preset(tmp_path / "resaved")

    def datasets(path, regroup=None):
        found = {}
        with h5py.File(path, "r") as weights:
            def keep(name, item):
                if isinstance(item, h5py.Dataset):
                    for old, new in (regroup or {}).items():
                        if name.startswith(old + "/"):
                            name = new + name[len(old):]
                    found[name] = item[()]
            weights.visititems(keep)
        return found

    legacy = datasets(folder / "model.weights.h5", LEGACY_WEIGHT_GROUPS)
    resaved = datasets(tmp_path / "resaved" / "model.weights.h5")
    assert sorted(legacy) == sorted(resaved) and len(legacy) == len(model.weights)
    assert all(np.array_equal(legacy[name], resaved[name]) for name in legacy)
    config = json.loads((tmp_path / "resaved" / "config.json").read_text())["config"]
    assert set(config) == {"backbone", "preprocessor", "tie_embeddings", "label_smoothing"}
    sources = ["Delete the selected person", "Open the family tree"]
    assert Translator.from_preset(tmp_path / "resaved").translate(sources, beam_size=4) == \
        model.translate(sources, beam_size=4)


def test_a_model_from_training_pairs_is_sized_to_its_learned_vocabularies():
    sources, targets = number_pairs(40, seed=2)
    model = Translator.from_training_pairs(sources, targets, **TINY)
    learned = max(len(model.source_vocabulary), len(model.target_vocabulary))
    assert learned < TINY["vocabulary_size"] and model.vocabulary_size == learned
    inputs, _, _ = model.preprocess_pair(tf.constant(sources[:4]), tf.constant(targets[:4]))
    assert model(inputs).shape[-1] == learned
    adapted = Translator(**TINY)
    adapted.adapt(sources, targets)
    assert (adapted.source_vocabulary, adapted.target_vocabulary) == (
        model.source_vocabulary, model.target_vocabulary)
    assert model.get_config()["backbone"]["vocabulary_size"] == learned
    assert len(model.translate(sources[:2])) == 2


def test_ids_past_the_learned_vocabulary_never_reach_the_detokenizer():
    """`vocabulary_size` sizes the output layer; the learned vocabulary can be
    smaller, and an untrained model picks such ids. The WordPiece
    detokenizer crashed the whole process on them (a segmentation fault)."""
    keras.utils.set_random_seed(0)
    model = Translator(**TINY)
    sources, targets = number_pairs(40, seed=2)
    model.adapt(sources, targets)
    assert len(model.target_vocabulary) < TINY["vocabulary_size"]
    beyond = len(model.target_vocabulary) + 3
    ids = tf.constant([[beyond, 7, beyond, END_ID, 9]], tf.int32)
    expected = model.detokenize(tf.constant([[7, END_ID]], tf.int32))
    assert model.detokenize(ids).numpy().tolist() == expected.numpy().tolist()
    assert len(model.translate(sources[:3])) == 3
