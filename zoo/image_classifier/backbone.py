"""The image backbone: pixels to patch tokens, a Vision Transformer built from keras_selfattn layers."""

import keras

import keras_selfattn as ksa
from keras_selfattn.layers.base_attention import check_positive_int
from keras_selfattn.layers.transformer_encoder_block import ATTENTION_TYPES
from zoo.backbone import Backbone
from zoo.image_classifier.preprocessor import image_size_pair


@keras.saving.register_keras_serializable(package="zoo")
class ImageBackbone(Backbone):
    """A Vision Transformer from normalized pixels to patch tokens.

    As in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021) and
    keras-hub's `ViTBackbone`: `PatchEmbedding` (non-overlapping patches
    through a strided convolution, learned position embeddings, an optional
    class token first), dropout, `num_layers` pre-norm
    `TransformerEncoderBlock`s with an exact (erf) GELU, and a final layer
    norm. The network converted ViT checkpoints map into
    (`zoo.image_classifier.convert`).

    Args:
        image_size: side of the square input, or `(height, width)`; both
            divisible by `patch_size`.
        channels: channels of the input.
        patch_size: side of the square patches.
        num_layers, num_heads, hidden_dim, intermediate_dim: sizes.
        class_token: prepend a learned class token.
        attention: `"multi_head"`, `"local_window"`, `"additive"` or
            `"self_attention"`.
        window_size: band half-width of `"local_window"`.
        dropout: dropout of the embeddings and of the residual branches.
        attention_dropout: dropout of the attention weights.
        layer_norm_epsilon: epsilon of every layer norm (1e-6 as the ViT
            paper; Hugging Face ViT checkpoints use 1e-12).

    Call arguments:
        pixels: `(B, height, width, channels)` float, normalized by the
            `ImagePreprocessor`.

    Returns:
        `{"sequence_output": (B, tokens, hidden_dim)}`, the class token (if
        any) first, then the patches row by row.

    Example:

    >>> backbone = ImageBackbone(image_size=8, channels=1, patch_size=4, num_layers=1,
    ...                          num_heads=2, hidden_dim=8, intermediate_dim=16)
    >>> backbone(np.zeros((1, 8, 8, 1)))["sequence_output"].shape
    TensorShape([1, 5, 8])
    """

    # What a pretrained backbone may change (`with_changes`): the image size
    # resizes the position table; the others change no weight.
    adjustable = ("image_size", "attention", "window_size", "dropout", "attention_dropout")

    def __init__(self, image_size, channels, patch_size, num_layers, num_heads, hidden_dim,
                 intermediate_dim, class_token=True, attention="multi_head", window_size=None,
                 dropout=0.0, attention_dropout=0.0, layer_norm_epsilon=1e-6, **kwargs):
        image_size = image_size_pair(image_size)
        for name, value in (("channels", channels), ("num_layers", num_layers),
                            ("num_heads", num_heads), ("hidden_dim", hidden_dim),
                            ("intermediate_dim", intermediate_dim)):
            check_positive_int(name, value)
        if not isinstance(patch_size, int) or patch_size <= 0 or any(s % patch_size
                                                                      for s in image_size):
            raise ValueError(
                "`patch_size` must be a positive int that divides both image "
                f"sides. Received: patch_size={patch_size!r}, image_size={image_size}"
            )
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"`attention` must be one of {ATTENTION_TYPES}. "
                             f"Received: attention={attention!r}")
        self.patch_embedding = ksa.PatchEmbedding(
            patch_size, hidden_dim, use_class_token=class_token, name="patch_embedding")
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.blocks = [
            ksa.TransformerEncoderBlock(
                num_heads, intermediate_dim, attention=attention, window_size=window_size,
                dropout=dropout,
                attention_dropout=attention_dropout,
                activation="gelu", normalize_first=True, layer_norm_epsilon=layer_norm_epsilon,
                name=f"encoder_{i}")
            for i in range(num_layers)
        ]
        self.final_normalization = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, name="final_norm")

        pixels = keras.Input((*image_size, channels), name="pixels")
        x = self.embed(pixels)
        for block in self.blocks:
            x = block(x)
        outputs = {"sequence_output": self.final_normalization(x)}
        super().__init__(inputs=pixels, outputs=outputs, **kwargs)

        self.image_size = image_size
        self.channels = channels
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.class_token = class_token
        self.attention = attention
        self.window_size = window_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.layer_norm_epsilon = layer_norm_epsilon

    def embed(self, pixels, training=None):
        """Pixels -> the first block's input `(B, tokens, hidden_dim)`."""
        return self.embedding_dropout(self.patch_embedding(pixels), training=training)

    @property
    def grid_shape(self):
        """`(rows, columns)` of the patch grid."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    def with_changes(self, **changes):
        """A new backbone with `changes` to its configuration and this one's
        weights; another `image_size` resizes the position embeddings of the
        patch grid by bicubic interpolation (ViT's fine-tuning at a new
        resolution), the others change no weight."""
        if "image_size" in changes:
            changes["image_size"] = image_size_pair(changes["image_size"])
        return super().with_changes(**changes)

    def carried_over(self, ours, theirs, other):
        if theirs is other.patch_embedding.position_embeddings:
            return self.patch_embedding.resized_position_embeddings(other.grid_shape)
        return ours

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "patch_size": self.patch_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "class_token": self.class_token,
            "attention": self.attention,
            "window_size": self.window_size,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        }
