"""Tutorial: train a translator on your own sentence pairs, then serve it.

Steps:
1. Your data: a TSV file, one `source<TAB>target` pair a line. Here we write
   one from the embedded Gramps interface messages, English -> French; any
   pair of languages works.
2. Build a `zoo.Translator` and `fit` it on raw strings: the WordPiece
   vocabularies are learned from your pairs at the first `fit`.
3. Translate with greedy and beam search, and score corpus BLEU on held-out
   pairs.
4. Export a versioned SavedModel (tokenization, beam search with the
   key/value cache and detokenization inside the graph) and query it the way
   TF Serving's REST API is queried, from a process that imports only
   tensorflow and tensorflow_text.

Run: `python tutorials/train_translator.py [--fast] [--work DIR]`.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from zoo import Translator, report  # noqa: E402
from zoo.data import read_sentence_pairs  # noqa: E402
from zoo.datasets import load_message_pairs  # noqa: E402
from zoo.serving_client import rest_in_fresh_process  # noqa: E402
from zoo.training import warmup_cosine  # noqa: E402


def write_your_pairs(path, count):
    """Stands in for your own data: a TSV of English -> French pairs."""
    pairs = load_message_pairs("fr")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("source\ttarget\n")
        for source, target in list(zip(pairs.sources, pairs.targets))[:count]:
            handle.write(f"{source}\t{target}\n")


def main(fast=False, work=None):
    keras.utils.set_random_seed(0)
    work = Path(work or tempfile.mkdtemp(prefix="translator_"))
    data_file = work / "my_pairs.tsv"
    write_your_pairs(data_file, 200 if fast else 5000)

    sources, targets = read_sentence_pairs(data_file)
    cut = len(sources) - (40 if fast else 300)
    train, held_out = (sources[:cut], targets[:cut]), (sources[cut:], targets[cut:])

    # Vocabularies learned from your pairs (at most vocabulary_size tokens
    # each), and the embeddings and output layer sized to what they hold.
    if fast:
        model = Translator.from_training_pairs(
            *train, vocabulary_size=600, source_sequence_length=24, target_sequence_length=24,
            hidden_dim=32, num_encoder_layers=1, num_decoder_layers=1, num_heads=2,
            intermediate_dim=64)
    else:
        model = Translator.from_training_pairs(
            *train, vocabulary_size=4000, hidden_dim=128, num_heads=4, intermediate_dim=512)
    epochs, batch_size = (2, 32) if fast else (30, 64)
    steps = epochs * -(-len(train[0]) // batch_size)
    model.compile(optimizer=keras.optimizers.AdamW(warmup_cosine(2e-3, steps),
                                                   weight_decay=0.01))
    model.fit(*train, epochs=epochs, batch_size=batch_size, verbose=2)

    greedy = model.translate(held_out[0])
    beam = model.translate(held_out[0], beam_size=4)
    print(f"BLEU on {len(held_out[0])} held-out pairs: greedy "
          f"{100 * report.corpus_bleu(held_out[1], greedy):.1f}, beam 4 "
          f"{100 * report.corpus_bleu(held_out[1], beam):.1f}")
    for source, reference, translation in list(zip(held_out[0], held_out[1], beam))[:3]:
        print(f"  {source}\n    reference:   {reference}\n    translation: {translation}")

    version = model.export(work / "served", beam_size=4)
    print(f"Exported to {version}")
    request = json.dumps({"signature_name": "serving_default",
                          "instances": ["Open the family tree", "Delete the selected person"]})
    answer = rest_in_fresh_process(work / "served", request)
    print("REST answer:", json.dumps(answer, ensure_ascii=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a small model, a few seconds")
    parser.add_argument("--work", help="folder for the data and the export")
    arguments = parser.parse_args()
    main(arguments.fast, arguments.work)
