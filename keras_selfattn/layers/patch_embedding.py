"""Image patches to a sequence of embeddings, for ViT models."""

import keras
from keras import ops

from keras_selfattn.layers.base_attention import check_positive_int


@keras.saving.register_keras_serializable(package="keras_selfattn")
class PatchEmbedding(keras.layers.Layer):
    """Cuts images into patches, embeds them and adds position embeddings.

    As in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021): each
    non-overlapping `patch_size x patch_size` patch is projected linearly
    to `embedding_dim`; a learned class token may be prepended; a learned
    position embedding is added.

    Args:
        patch_size: side of the square patches; must divide the image sides.
        embedding_dim: width of the embeddings.
        use_class_token: whether to prepend a learned class token.
        kernel_initializer: initializer of the patch projection.

    Call arguments:
        inputs: `(B, H, W, C)` float images.

    Returns:
        `(B, N + use_class_token, embedding_dim)`, `N = (H / p) * (W / p)`.

    Example:

    >>> images = keras.random.uniform((2, 32, 32, 3))
    >>> tuple(PatchEmbedding(patch_size=8, embedding_dim=16)(images).shape)
    (2, 17, 16)
    """

    def __init__(self, patch_size, embedding_dim, use_class_token=True,
                 kernel_initializer="glorot_uniform", **kwargs):
        check_positive_int("patch_size", patch_size)
        check_positive_int("embedding_dim", embedding_dim)
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.embedding_dim = embedding_dim
        self.use_class_token = use_class_token
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.projection = keras.layers.Conv2D(
            embedding_dim,
            kernel_size=patch_size,
            strides=patch_size,
            kernel_initializer=kernel_initializer,
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "`inputs` must be images shaped (B, H, W, C) with C known. "
                f"Received: inputs.shape={input_shape}"
            )
        height, width = input_shape[1:3]
        for side, name in ((height, "height"), (width, "width")):
            if side is None or side % self.patch_size:
                raise ValueError(
                    f"The image {name} must be known and divisible by "
                    f"patch_size={self.patch_size}. Received: "
                    f"inputs.shape={input_shape}"
                )
        self.grid_shape = (height // self.patch_size, width // self.patch_size)
        self.num_patches = self.grid_shape[0] * self.grid_shape[1]
        self.projection.build(input_shape)
        if self.use_class_token:
            self.class_token = self.add_weight(
                name="class_token", shape=(1, 1, self.embedding_dim),
                initializer="zeros",
            )
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(1, self.num_patches + int(self.use_class_token),
                   self.embedding_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, inputs):
        patches = self.projection(inputs)
        batch = ops.shape(patches)[0]
        patches = ops.reshape(
            patches, (batch, self.num_patches, self.embedding_dim)
        )
        if self.use_class_token:
            token = ops.broadcast_to(
                ops.cast(self.class_token, patches.dtype),
                (batch, 1, self.embedding_dim),
            )
            patches = ops.concatenate([token, patches], axis=1)
        return patches + ops.cast(self.position_embeddings, patches.dtype)

    def resized_position_embeddings(self, grid_shape):
        """The position embeddings moved to another patch grid.

        The grid part is resized by bicubic interpolation, as ViT does when
        fine-tuning at a new resolution (Dosovitskiy et al., 2021, 3.2); the
        class token's embedding is kept as it is.

        Args:
            grid_shape: `(rows, columns)` of the new patch grid.

        Returns:
            `(1, rows * columns + use_class_token, embedding_dim)`.
        """
        rows, columns = grid_shape
        check_positive_int("rows", rows)
        check_positive_int("columns", columns)
        table = ops.convert_to_tensor(self.position_embeddings)
        if tuple(grid_shape) == tuple(self.grid_shape):
            return table
        start = int(self.use_class_token)
        grid = ops.reshape(
            table[:, start:], (1, *self.grid_shape, self.embedding_dim)
        )
        grid = ops.image.resize(
            ops.cast(grid, "float32"), (rows, columns), interpolation="bicubic",
            data_format="channels_last",
        )
        grid = ops.cast(
            ops.reshape(grid, (1, rows * columns, self.embedding_dim)), table.dtype
        )
        return ops.concatenate([table[:, :start], grid], axis=1)

    def compute_output_shape(self, input_shape):
        height, width = input_shape[1:3]
        count = (height // self.patch_size) * (width // self.patch_size)
        return (input_shape[0], count + int(self.use_class_token),
                self.embedding_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "embedding_dim": self.embedding_dim,
            "use_class_token": self.use_class_token,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }
