"""The pretrained text body: corpus, masking, the MLM network, resumable
pretraining, and fine-tuning it as a text classifier."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import environment, run_until
from zoo.text_encoder.pretrain import pack_sequences
from zoo.text_encoder.preprocessor import MaskedLanguageModelPreprocessor

TINY_ENCODER = dict(vocabulary_size=400, sequence_length=32, hidden_dim=16, num_layers=1,
                    num_heads=2, intermediate_dim=32, dropout=0.0)


@pytest.fixture(scope="module")
def tiny_texts(sentiment_sample):
    (texts, _), _ = sentiment_sample
    return {"reviews": [str(t) for t in texts[:300]]}


@pytest.fixture(scope="module")
def tiny_encoder(tiny_texts, tmp_path_factory):
    from zoo.text_encoder.pretrain import prepare

    work = tmp_path_factory.mktemp("encoder")
    encoder, sequences = prepare(work, tiny_texts, TINY_ENCODER, verbose=False)
    return encoder, sequences, work


# Packing and masking.

def test_packing_keeps_every_token_in_order_with_separators():
    lists = [np.array([7, 8, 9]), np.array([10]), np.array([11, 12, 13, 14, 15])]
    packed = pack_sequences(lists, 5, cls_id=2, sep_id=3)
    assert packed.shape == (3, 5) and (packed[:, 0] == 2).all()
    assert packed[:, 1:].ravel().tolist() == [7, 8, 9, 3, 10, 3, 11, 12, 13, 14, 15, 3]
    assert pack_sequences([], 5, 2, 3).shape == (0, 5)


def random_sequences(rng, rows=400, length=64, vocabulary=500, first_word=5):
    """Packed-like sequences: `[CLS]`, words, `[SEP]`, padding; some all special."""
    sequences = rng.integers(first_word, vocabulary, (rows, length)).astype("int32")
    sequences[:, 0] = 2
    lengths = rng.integers(2, length + 1, rows)
    sequences[np.arange(length)[None, :] >= lengths[:, None]] = 0
    sequences[np.arange(rows), lengths - 1] = 3
    return sequences


@pytest.mark.parametrize("seed", range(4))
def test_masking_follows_bert(seed):
    import tensorflow as tf

    vocabulary, first_word = 500, 5
    sequences = random_sequences(np.random.default_rng(seed), vocabulary=vocabulary)
    masking = MaskedLanguageModelPreprocessor(4, first_word, vocabulary)
    inputs, labels, weights = (tf.nest.map_structure(np.asarray, part)
                               for part in masking(sequences, seed=[seed, 7]))
    corrupted, positions = inputs["token_ids"], inputs["mask_positions"]
    assert positions.shape == labels.shape == weights.shape == (400, 20)
    picked = weights.astype(bool)
    words = (sequences >= first_word).sum(1)
    # 15% of each sequence's word tokens (at least one, at most 20) and none else.
    expected = np.where(words > 0, np.clip(np.round(words * 0.15), 1, 20), 0)
    assert (words == 0).any()
    np.testing.assert_array_equal(picked.sum(1), expected)
    rows = np.nonzero(picked)[0]
    assert (sequences[rows, positions[picked]] >= first_word).all()
    np.testing.assert_array_equal(labels[picked], sequences[rows, positions[picked]])
    assert (positions[~picked] == 0).all() and (labels[~picked] == 0).all()
    # Positions are distinct, in reading order, and only they change.
    for row in range(400):
        chosen = positions[row][picked[row]]
        assert len(set(chosen.tolist())) == len(chosen) and (np.diff(chosen) > 0).all()
        unchanged = np.setdiff1d(np.arange(64), chosen)
        np.testing.assert_array_equal(corrupted[row, unchanged], sequences[row, unchanged])
    now = corrupted[rows, positions[picked]]
    share_masked = (now == 4).mean()
    share_kept = (now == labels[picked]).mean()
    assert abs(share_masked - 0.8) < 0.04 and abs(share_kept - 0.1 - 1 / vocabulary) < 0.03
    assert (now[(now != 4)] >= first_word).all()
    # The same seed gives the same masks, another seed others.
    again, _, _ = masking(sequences, seed=[seed, 7])
    np.testing.assert_array_equal(np.asarray(again["token_ids"]), corrupted)
    other, _, _ = masking(sequences, seed=[seed, 8])
    assert not np.array_equal(np.asarray(other["token_ids"]), corrupted)


def test_masking_runs_in_tf_data_and_a_resumed_epoch_masks_as_the_whole_one():
    """Batch `i` of an epoch is masked by its own seed: skipping the batches
    a resumed run has done leaves the rest as the uninterrupted run had them."""
    import tensorflow as tf

    sequences = random_sequences(np.random.default_rng(3), rows=50, length=16)
    masking = MaskedLanguageModelPreprocessor(4, 5, 500)
    whole = list(masking.dataset(sequences, 8, (0, 2)).as_numpy_iterator())
    resumed = list(masking.dataset(sequences, 8, (0, 2)).skip(4).as_numpy_iterator())
    assert len(whole) == 7 and len(resumed) == 3
    for (a_inputs, a_labels, _), (b_inputs, b_labels, _) in zip(whole[4:], resumed):
        np.testing.assert_array_equal(a_inputs["token_ids"], b_inputs["token_ids"])
        np.testing.assert_array_equal(a_labels, b_labels)
    # Traced once in the pipeline's graph, shapes known but the batch.
    spec = masking.dataset(sequences, 8, (0, 2)).element_spec
    assert spec[0]["token_ids"].shape.as_list() == [None, 16]
    assert spec[1].shape.as_list() == spec[2].shape.as_list() == [None, 16]
    assert spec[2].dtype == tf.float32


def test_masking_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rate"):
        MaskedLanguageModelPreprocessor(4, 5, 500, rate=0.0)
    with pytest.raises(ValueError, match="vocabulary_size"):
        MaskedLanguageModelPreprocessor(4, 5, 5)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        MaskedLanguageModelPreprocessor(4, 5, 500)(np.zeros(8, "int32"), seed=[0, 0])


# The network.

def test_mlm_logits_are_tied_to_the_embedding_float64_reference(tiny_encoder):
    encoder, sequences, _ = tiny_encoder
    ids = sequences[:3]
    positions = np.array([[1, 4, 7], [2, 3, 5], [9, 10, 11]], "int32")
    logits = np.asarray(encoder({"token_ids": ids, "mask_positions": positions}))
    hidden = np.asarray(encoder.encode(ids), "float64")
    picked = np.take_along_axis(hidden, positions[..., None], axis=1)
    kernel, bias = (np.asarray(w, "float64") for w in encoder.mlm_dense.get_weights())
    z = picked @ kernel + bias
    z = 0.5 * z * (1 + np.vectorize(__import__("math").erf)(z / np.sqrt(2)))
    gamma, beta = (np.asarray(w, "float64") for w in encoder.mlm_norm.get_weights())
    z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5) * gamma + beta
    table = np.asarray(encoder.backbone.token_embeddings, "float64")
    expected = z @ table.T + np.asarray(encoder.mlm_logits.bias, "float64")
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert encoder.vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mlm_trains_under_mixed_precision_with_float32_logits(tiny_encoder, policy):
    import keras
    import tensorflow as tf

    from zoo.text_encoder.text_encoder import TextEncoder

    encoder, sequences, _ = tiny_encoder
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = TextEncoder(vocabulary=encoder.vocabulary, **TINY_ENCODER)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(encoder.get_weights())
    inputs, labels, weights = (tf.nest.map_structure(np.asarray, part) for part
                               in mixed.masking_preprocessor()(sequences[:8], seed=[0, 0]))
    logits = mixed(inputs)
    assert logits.dtype == "float32"
    reference = np.asarray(encoder(inputs))
    # Half precision keeps about 3 (float16) or 2 (bfloat16) digits.
    np.testing.assert_allclose(np.asarray(logits), reference, atol=0.1 * np.abs(reference).max())
    mixed.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = mixed.fit(inputs, labels, sample_weight=weights, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(loss))


def test_pre_norm_body_moves_with_its_final_norm_and_fine_tunes_with_dropout(
        tiny_encoder, tmp_path):
    from zoo import TextClassifier
    from zoo.text_encoder.text_encoder import TextEncoder

    encoder, sequences, _ = tiny_encoder
    pre_norm = TextEncoder(vocabulary=encoder.vocabulary,
                           **{**TINY_ENCODER, "normalize_first": True})
    final_norm = pre_norm.backbone.get_layer("final_norm")
    final_norm.set_weights([np.linspace(0.5, 2.0, 16), np.linspace(-1.0, 1.0, 16)])
    hidden = np.asarray(pre_norm.encode(sequences[:3]), "float64")
    gamma, beta = (np.asarray(w, "float64") for w in final_norm.get_weights())
    standardized = (hidden - beta) / gamma
    np.testing.assert_allclose(standardized.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(standardized.std(-1), 1.0, atol=1e-3)

    pre_norm.save_to_preset(tmp_path / "body")
    classifier = TextClassifier.from_preset(tmp_path / "body", labels=["a", "b"])
    assert classifier.backbone.normalize_first and classifier.dropout == 0.1  # body pretrained at 0.0
    np.testing.assert_array_equal(classifier.backbone.get_layer("final_norm").get_weights()[1], beta)
    assert TextClassifier.from_preset(tmp_path / "body", labels=["a", "b"], dropout=0.3).dropout == 0.3


def test_encoder_preset_carries_its_notice_and_checksums(tiny_encoder, tmp_path):
    # Identical outputs after the round trip: tests/test_preset_contract.py.
    from zoo.text_encoder.text_encoder import TextEncoder

    encoder, sequences, _ = tiny_encoder
    encoder.save_to_preset(tmp_path / "body")
    assert "WordNet 3.0 Copyright 2006" in (tmp_path / "body/assets/NOTICE").read_text()
    assert TextEncoder.from_preset(tmp_path / "body").vocabulary == encoder.vocabulary
    weights = tmp_path / "body/model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match="corrupt or changed"):
        TextEncoder.from_preset(tmp_path / "body")


# Pretraining: deterministic and resumable.

# `job.py TEXTS WORK WEIGHTS [WORK WEIGHTS ...]`: pretrains (or resumes) in
# each WORK in turn, in one process, and saves each encoder's weights.
PRETRAIN_SCRIPT = """
import json, sys
import tensorflow as tf
from zoo.text_encoder.pretrain import pretrain
tf.config.experimental.enable_op_determinism()
texts, architecture = json.load(open(sys.argv[1]))
for work, weights in zip(sys.argv[2::2], sys.argv[3::2]):
    encoder, summary = pretrain(work, epochs=2, batch_size=8, texts=texts,
                                architecture=architecture, checkpoint_every=10, verbose=2)
    encoder.save_weights(weights)
    print("summary:", json.dumps(summary))
"""


@pytest.mark.slow
def test_killed_pretraining_resumes_to_the_uninterrupted_weights(tiny_texts, tmp_path):
    (tmp_path / "job.py").write_text(PRETRAIN_SCRIPT)
    # A third of the texts: 26 steps an epoch, killed in the first; the
    # resumed and the whole run together train 84 steps, not 222.
    texts = {source: part[:100] for source, part in tiny_texts.items()}
    (tmp_path / "texts.json").write_text(json.dumps([texts, TINY_ENCODER]))

    def command(*works):
        return [sys.executable, "job.py", "texts.json",
                *(part for work in works for part in (work, f"{work}.weights.h5"))]

    first = run_until(command("killed"), tmp_path, "checkpoint: step 20")
    assert "checkpoint: step 10" in first
    # The rerun resumes in a new process, as after a real kill. The same
    # process then pretrains from scratch without interruption: the weights
    # the resumed run must end with. (Run alone in a process of its own, that
    # reference gave the same weights bit for bit: it starts from the seed.)
    second = subprocess.run(command("killed", "whole"), cwd=tmp_path, env=environment(),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    resumed_log, whole_log, _ = second.stdout.split("summary:")
    assert "resuming from the checkpoint at step 20" in resumed_log
    assert "resuming" not in whole_log
    assert "pretraining:" in whole_log and "val_accuracy" in whole_log
    resumed, whole = (json.loads(part.split("\n", 1)[0])
                      for part in second.stdout.split("summary:")[1:])
    assert len(whole["validation_mlm_accuracy"]) == 2
    assert resumed["steps"] == whole["steps"]

    import h5py

    with h5py.File(tmp_path / "whole.weights.h5") as a, h5py.File(tmp_path / "killed.weights.h5") as b:
        names = []
        a.visit(lambda name: names.append(name) if isinstance(a[name], h5py.Dataset) else None)
        assert names
        for name in names:
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


# The corpus.

def test_wiki_markup_is_stripped_to_plain_paragraphs():
    from zoo.text_encoder.corpus import strip_wiki_markup

    text = ("{{Infobox|name={{nested|x}}}}\n'''Anarchism''' is a [[political philosophy]] "
            "that advocates [[self-governance|self-governed]] societies.<ref>Woodcock</ref>\n"
            "== History ==\n* a list item\n[[File:A.jpg|thumb|A [[caption]]]]\n"
            "{| class=wikitable\n| cell\n|}\nSee [http://example.org the site]. <!-- hidden -->")
    assert strip_wiki_markup(text).split("\n") == [
        "Anarchism is a political philosophy that advocates self-governed societies.",
        "See the site.",
    ]


@pytest.mark.slow
def test_held_out_test_texts_never_reach_pretraining():
    from zoo import datasets
    from zoo.text_encoder import corpus

    texts = corpus.pretraining_texts()
    assert set(texts) == set(corpus.SOURCES) and all(texts.values())
    everything = {t for source in texts.values() for t in source}
    (_, _), (sentiment_test, _) = datasets.load_sentiment()
    assert not everything & set(map(str, sentiment_test))
    # Glosses carry their lemmas in the corpus: match on the gloss.
    glosses = {t.split(": ", 1)[1] for t in texts["wordnet"] if ": " in t}
    (train, _), (test, _) = datasets.load_definitions()
    held_out = set(map(str, test))
    assert not glosses & (held_out - set(map(str, train)))
    assert len(set(map(str, train)) & glosses) > 0.9 * len(set(map(str, train)))


# Fine-tuning the shipped body.

def test_shipped_body_gets_a_fresh_head_and_keeps_its_weights():
    from zoo import TextClassifier
    from zoo.classifier import HEAD_NAME
    from zoo.text_encoder.text_encoder import TextEncoder

    encoder = TextEncoder.from_preset("english_body_small")
    classifier = TextClassifier.from_preset("english_body_small", labels=["a", "b", "c"])
    assert classifier.vocabulary == encoder.vocabulary and classifier.num_classes == 3
    for name in ("embedding", "encoder_0", f"encoder_{encoder.backbone.num_layers - 1}"):
        for ours, theirs in zip(classifier.backbone.get_layer(name).weights,
                               encoder.backbone.get_layer(name).weights):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert classifier.get_layer(HEAD_NAME).kernel.shape == (encoder.backbone.hidden_dim, 3)
    with pytest.raises(ValueError, match="without a classifier head"):
        TextClassifier.from_preset("english_body_small")
    with pytest.raises(ValueError, match="hidden_dim"):
        TextClassifier.from_preset("english_body_small", labels=["a", "b"], hidden_dim=8)


def test_a_rerun_reads_the_vocabulary_and_packed_corpus_from_the_work_folder(tiny_encoder):
    from zoo.text_encoder.pretrain import prepare

    encoder, sequences, work = tiny_encoder
    assert sequences.ndim == 2 and sequences.shape[1] == TINY_ENCODER["sequence_length"]
    assert (sequences[:, 0] == encoder.start_id).all()
    # No texts given: a missing cache would read the whole corpus instead.
    again, cached = prepare(work, None, TINY_ENCODER, verbose=False)
    assert again.vocabulary == encoder.vocabulary
    np.testing.assert_array_equal(cached, sequences)
