"""The seq2seq translator: strings in, strings out."""

from zoo.translator.model import Translator  # noqa: F401
