"""Self-attention layers for Keras 3: drop them into your own models.

Every layer is registered as serializable under the package name
`keras_selfattn`, so `keras.saving.load_model` needs only `import
keras_selfattn`.
"""

from keras_selfattn.layers.additive import Additive
from keras_selfattn.layers.local_window import LocalWindow
from keras_selfattn.layers.multi_head import MultiHead
from keras_selfattn.layers.patch_embedding import PatchEmbedding
from keras_selfattn.layers.position_embedding import PositionEmbedding
from keras_selfattn.layers.self_attention import SelfAttention
from keras_selfattn.layers.sine_position_encoding import SinePositionEncoding
from keras_selfattn.layers.token_and_position_embedding import (
    TokenAndPositionEmbedding,
)
from keras_selfattn.layers.transformer_decoder_block import (
    TransformerDecoderBlock,
)
from keras_selfattn.layers.transformer_encoder_block import (
    TransformerEncoderBlock,
)

__version__ = "0.1.0"

__all__ = [
    "Additive",
    "LocalWindow",
    "MultiHead",
    "PatchEmbedding",
    "PositionEmbedding",
    "SelfAttention",
    "SinePositionEncoding",
    "TokenAndPositionEmbedding",
    "TransformerDecoderBlock",
    "TransformerEncoderBlock",
]
