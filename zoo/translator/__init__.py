"""The seq2seq translator: strings in, strings out."""

from zoo.translator.translator import Translator

__all__ = ["Translator"]
