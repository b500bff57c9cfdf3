"""The text transformer: the architecture the text tasks share.

`TextBackbone` (token ids to hidden states), `TextPreprocessor` (WordPiece
or byte-pair tokenization on tensorflow-text ops), the conversion of
BERT-family checkpoints (`convert`), and where a pretrained body comes from
(`bodies`, with the shipped bodies in `presets/`). It imports no task: the
text classifier, the text encoder and the translator import it.
"""

from zoo.text_transformer import bodies
from zoo.text_transformer.backbone import TextBackbone
from zoo.text_transformer.preprocessor import TextPreprocessor

__all__ = ["TextBackbone", "TextPreprocessor", "bodies"]
