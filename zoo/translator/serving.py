"""The translator's SavedModel: strings in, translations out, in one graph."""

import functools

import tensorflow as tf

from zoo.export import checked_texts, traced_signatures
from zoo.keras_compat import set_untracked

# What one request to the exported translator may hold by default (`export`):
# 64 sentences of up to 16 KB, each cut to the model's source length and
# decoded by beam search (`bench/RESULTS.md`, "Serving limits").
MAX_REQUEST_TEXTS = 64
MAX_REQUEST_TEXT_BYTES = 16_384


class TranslatorServing(tf.Module):
    """What the SavedModel tracks: the network, tokenizers, the decoder.

    Args:
        translator: a `Translator` without an optimizer (`inference_copy`).
        beam_size, max_length, length_penalty: fixed for every request.
        max_texts, max_text_bytes: the most texts a request holds, and the
            most bytes a text has; beyond either it gets an
            `InvalidArgumentError` naming the limit.
    """

    def __init__(self, translator, beam_size, max_length, length_penalty,
                 max_texts=MAX_REQUEST_TEXTS, max_text_bytes=MAX_REQUEST_TEXT_BYTES):
        super().__init__()
        self.max_texts, self.max_text_bytes = int(max_texts), int(max_text_bytes)
        translator.preprocessor.check_vocabularies()
        set_untracked(self, translator=translator)
        self.variables_ = list(translator.variables)
        self.source_tokenizer = translator.preprocessor.source.tokenizer
        self.target_tokenizer = translator.preprocessor.target.tokenizer
        # Wrapped so that the SavedModel does not save the inner function
        # as a second, untracked-signature endpoint.
        self._translate = functools.partial(
            translator.translation_function(beam_size, max_length, length_penalty))

    def serve(self, text):
        translation, _ = self._translate(checked_texts(text, self.max_texts,
                                                       self.max_text_bytes))
        return {"translation": translation}

    def serve_with_scores(self, text):
        translation, score = self._translate(checked_texts(text, self.max_texts,
                                                           self.max_text_bytes))
        return {"translation": translation, "score": score}

    def signatures(self):
        """The named signatures of the export."""
        text = [tf.TensorSpec([None], tf.string, name="text")]
        return traced_signatures({"serving_default": (self.serve, text),
                                  "translate_with_scores": (self.serve_with_scores, text)})
