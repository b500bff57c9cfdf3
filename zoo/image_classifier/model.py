"""ViT image classifier: uint8 images or encoded image bytes in, class probabilities out."""

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import keras_selfattn as ksa
from zoo.classifier import HEAD_NAME, ClassifierModel, ClassifierServing
from zoo.export import export_saved_model

KIND = "image_classifier"
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
POOLINGS = ("token", "gap")
AUGMENTATIONS = ("flip", "translation", "rotation", "zoom")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
# Leading bytes of the formats `tf.io.decode_image` reads.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")
# ITU-R BT.601 luma; the weights sum to 1, so equal channels give the gray back.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

_VIT_PAPER = dict(image_size=224, channels=3, patch_size=16, pooling="token")
# Named architectures: the ViT paper's sizes (Dosovitskiy et al., 2021, Table 1,
# with DeiT's "tiny"), and small-image ones with 4 x 4 patches, so that a
# 28 x 28 or 32 x 32 image gives a 7 x 7 or 8 x 8 grid to attend over.
CONFIGURATIONS = {
    "vit_tiny_16": dict(**_VIT_PAPER, hidden_dim=192, num_layers=12, num_heads=3,
                        intermediate_dim=768),
    "vit_small_16": dict(**_VIT_PAPER, hidden_dim=384, num_layers=12, num_heads=6,
                         intermediate_dim=1536),
    "vit_base_16": dict(**_VIT_PAPER, hidden_dim=768, num_layers=12, num_heads=12,
                        intermediate_dim=3072),
    "vit_micro_4_28": dict(image_size=28, channels=1, patch_size=4, hidden_dim=96,
                           num_layers=6, num_heads=4, intermediate_dim=192, pooling="gap"),
    "vit_micro_4_32": dict(image_size=32, channels=3, patch_size=4, hidden_dim=96,
                           num_layers=6, num_heads=4, intermediate_dim=192, pooling="gap"),
}


def _image_size(value):
    size = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(
            "`image_size` must be a positive int or a (height, width) pair. "
            f"Received: image_size={value!r}"
        )
    return [int(size[0]), int(size[1])]


def _check_augmentation(augmentation):
    if augmentation is None:
        return None
    if not isinstance(augmentation, dict):
        raise TypeError(
            "`augmentation` must be None or a dict with keys among "
            f"{AUGMENTATIONS}. Received: augmentation={augmentation!r}"
        )
    unknown = set(augmentation) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(
            f"Unknown augmentation {sorted(unknown)}; expected keys among "
            f"{AUGMENTATIONS}. Received: augmentation={augmentation!r}"
        )
    flip = augmentation.get("flip")
    if flip not in (None, False, *FLIP_MODES):
        raise ValueError(
            f"augmentation['flip'] must be None or one of {FLIP_MODES}. Received: {flip!r}"
        )
    for name in ("translation", "rotation", "zoom"):
        value = augmentation.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(
                f"augmentation[{name!r}] must be a fraction in [0, 1). Received: {value!r}"
            )
    return dict(augmentation)


@keras.saving.register_keras_serializable(package="zoo")
class ImageClassifier(ClassifierModel):
    """A Vision Transformer classifier that takes raw images.

    As in "An Image is Worth 16x16 Words" (Dosovitskiy et al., 2021):
    `PatchEmbedding` (non-overlapping patches, learned position embeddings,
    a class token with `pooling="token"`), pre-norm `TransformerEncoderBlock`s
    with the chosen attention, a final layer norm, the class token or the
    mean of the patch tokens (`pooling="gap"`), and a dense head.

    Preprocessing runs in the `tf.data` pipeline and again, the same
    functions, inside the exported SavedModel: images are decoded (JPEG, PNG,
    BMP or GIF bytes), converted to the model's channels (RGB to grayscale by
    luma, grayscale to RGB by repetition, alpha dropped) and resized
    (bilinear, antialiased) to `image_size`. Augmentation runs in training
    only.

    `fit`, `evaluate` and `predict` take uint8 arrays `(N, H, W)` or
    `(N, H, W, C)`, lists of images of any sizes, encoded image bytes, image
    file paths, a `tf.data.Dataset` of any of these, or a folder laid out as
    `class_name/*.png|jpg|jpeg|bmp|gif` (labels are the folder names,
    sorted, unless given with `labels=`).

    Args:
        num_classes: number of classes; defaults to `len(labels)`.
        labels: class names, stored with the model and returned by the export.
        image_size: side of the square input, or `(height, width)`; both
            divisible by `patch_size`.
        channels: 1 (grayscale) or 3 (RGB).
        patch_size: side of the square patches.
        hidden_dim, num_layers, num_heads, intermediate_dim, dropout: sizes.
        pooling: `"token"` (class token) or `"gap"` (mean of patch tokens).
        attention: `"multi_head"`, `"local_window"`, `"additive"` or
            `"self_attention"`.
        window_size: band half-width for `"local_window"`.
        augmentation: None, or a dict with any of `flip` (None,
            `"horizontal"`, `"vertical"`, `"horizontal_and_vertical"`; off by
            default, right for digits), `translation` (fraction of the side),
            `rotation` (fraction of a full turn) and `zoom` (fraction), applied
            in training only.

    Example:

    >>> model = ImageClassifier(labels=["a", "b"], image_size=16, patch_size=4,
    ...                         hidden_dim=16, num_layers=1, num_heads=2,
    ...                         intermediate_dim=32)
    >>> images = np.zeros((4, 20, 20, 3), "uint8")
    >>> model.predict(images, verbose=0).shape
    (4, 2)
    """

    raw_input_spec = tf.TensorSpec((None, None, None), tf.uint8)
    raw_dtypes = (tf.uint8, tf.string)
    kind = KIND
    presets_dir = PRESETS_DIR
    configurations = CONFIGURATIONS
    adjustable_at_load = ("dropout", "num_classes", "image_size", "augmentation")
    drop_remainder_in_training = True

    def __init__(self, num_classes=None, labels=None, image_size=28, channels=1,
                 patch_size=4, hidden_dim=64, num_layers=6, num_heads=4,
                 intermediate_dim=128, pooling="gap", attention="multi_head",
                 window_size=None, dropout=0.1, augmentation=None, **kwargs):
        image_size = _image_size(image_size)
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
        if not isinstance(patch_size, int) or patch_size <= 0 or any(s % patch_size for s in image_size):
            raise ValueError(
                "`patch_size` must be a positive int that divides both image "
                f"sides. Received: patch_size={patch_size!r}, image_size={image_size}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
        augmentation = _check_augmentation(augmentation)
        super().__init__(num_classes, labels, **kwargs)
        self.image_size = image_size
        self.channels = channels
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.pooling = pooling
        self.attention = attention
        self.window_size = window_size
        self.dropout = dropout
        self.augmentation = augmentation

        # The augmentation layers run in the training pipeline, not in the
        # network (see `augment`); untracked, they hold no saved state and
        # do not stop XLA from compiling the network.
        object.__setattr__(self, "augmenters", self._augmenters(augmentation or {}))
        self.patch_embedding = ksa.PatchEmbedding(
            patch_size, hidden_dim, use_class_token=pooling == "token",
            name="patch_embedding",
        )
        self.embedding_dropout = keras.layers.Dropout(dropout, name="embedding_dropout")
        self.blocks = [
            ksa.TransformerEncoderBlock(
                num_heads, intermediate_dim, attention=attention,
                window_size=window_size, dropout=dropout, activation="gelu",
                normalize_first=True, layer_norm_epsilon=1e-6, name=f"encoder_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.head = keras.layers.Dense(self.num_classes, dtype="float32", name=HEAD_NAME)
        # Calling the network once creates every weight, so presets and
        # checkpoints load into a complete model.
        self(np.zeros((1, *image_size, channels), "float32"))

    @staticmethod
    def _augmenters(options):
        layers = []
        if options.get("flip"):
            layers.append(keras.layers.RandomFlip(options["flip"], name="augment_flip"))
        if options.get("translation"):
            t = options["translation"]
            layers.append(keras.layers.RandomTranslation(t, t, fill_mode="constant",
                                                         name="augment_translation"))
        if options.get("rotation"):
            layers.append(keras.layers.RandomRotation(options["rotation"], fill_mode="constant",
                                                      name="augment_rotation"))
        if options.get("zoom"):
            layers.append(keras.layers.RandomZoom(options["zoom"], fill_mode="constant",
                                                  name="augment_zoom"))
        return layers

    @classmethod
    def from_configuration(cls, name, **kwargs):
        """A fresh (untrained) model of a named architecture, e.g. `"vit_tiny_16"`."""
        if name not in CONFIGURATIONS:
            raise ValueError(
                f"Unknown configuration {name!r}; expected one of {sorted(CONFIGURATIONS)}."
            )
        return cls(**{**CONFIGURATIONS[name], **kwargs})

    # Raw inputs.

    def raw_examples(self, x, y=None):
        """A folder gives its images and, from its sub-folder names, labels."""
        if isinstance(x, (str, os.PathLike)) and Path(x).is_dir():
            from zoo.data import read_image_folder

            if y is not None:
                raise ValueError(
                    f"{x} is a folder: its labels are its sub-folder names, so "
                    "`y` must not be given."
                )
            images, labels, skipped = read_image_folder(x)
            self.skipped_files = skipped
            return np.array(images, dtype=object), np.array(labels)
        return self.raw_array(x), y

    def raw_array(self, x):
        """Images as one uint8 `(N, H, W, C)` array, or encoded bytes `(N,)`."""
        if isinstance(x, (str, bytes, os.PathLike)):
            raise TypeError(
                "Give a list of images (or a folder of labelled images), not a "
                f"single {type(x).__name__}."
            )
        if isinstance(x, np.ndarray) and x.dtype != object:
            return _image_array(x)
        items = list(x)
        if items and all(isinstance(i, (str, os.PathLike)) for i in items):
            items = [_read_image_file(i) for i in items]
        if items and all(isinstance(i, bytes) for i in items):
            return np.array(items, dtype=object)
        arrays = [np.asarray(i) for i in items]
        if len({a.shape for a in arrays}) <= 1:
            return _image_array(np.stack(arrays) if arrays else np.zeros((0, 1, 1, 1), "uint8"))
        # Images of different sizes cannot share an array: encode each
        # losslessly, so they take the path of image files.
        return np.array([
            tf.io.encode_png(_image_array(a[None])[0]).numpy() for a in arrays
        ], dtype=object)

    def is_batched(self, element_spec):
        rank = element_spec.shape.rank
        if element_spec.dtype == tf.string:
            return rank == 1
        # (H, W) and (H, W, C) are single images; (B, H, W) grayscale batches
        # are told from (H, W, C) by their last dimension.
        return rank == 4 or (rank == 3 and element_spec.shape[-1] not in (1, 2, 3, 4))

    def preprocess(self, images):
        """A batch of raw images -> `(B, height, width, channels)` float32 in [0, 1].

        Takes encoded image bytes `(B,)` or uint8 pixels `(B, H, W[, C])` of
        any size and channel count.
        """
        images = tf.convert_to_tensor(images)
        if images.dtype == tf.string:
            indices = tf.range(tf.shape(images, out_type=tf.int64)[0])
            return tf.map_fn(
                lambda item: self._decode(*item), (images, indices),
                fn_output_signature=tf.TensorSpec((*self.image_size, self.channels), tf.float32),
            )
        if images.shape.rank == 3:
            images = images[..., None]
        return self.standardize(images)

    def preprocess_example(self, image):
        """One raw image (bytes or uint8 `(H, W[, C])`) -> float32 `(height, width, channels)`."""
        if image.dtype == tf.string:
            return self._decode(image, tf.constant(-1, tf.int64))
        if image.shape.rank == 2:
            image = image[..., None]
        return self.standardize(image)

    def _decode(self, data, index):
        recognised = tf.reduce_any(tf.stack([
            tf.strings.substr(data, 0, len(signature)) == signature
            for signature in IMAGE_SIGNATURES
        ]))
        check = tf.debugging.Assert(recognised, [tf.strings.format(
            "image_bytes[{}] ({} bytes) is not a JPEG, PNG, BMP or GIF image",
            (index, tf.strings.length(data)),
        )])
        with tf.control_dependencies([check]):
            image = tf.io.decode_image(data, channels=0, expand_animations=False)
        return self.standardize(image)

    def standardize(self, images):
        """uint8 `(..., H, W, C)`, any size and channels -> the model's float input."""
        if images.dtype != tf.uint8:
            raise TypeError(
                f"Images must be uint8 (0-255). Received dtype {images.dtype.name}."
            )
        x = _convert_channels(tf.cast(images, tf.float32), self.channels)
        height, width = self.image_size
        size = tf.shape(x)[-3:-1]
        if tuple(x.shape[-3:-1]) != (height, width):
            x = tf.cond(
                tf.reduce_all(size == [height, width]),
                lambda: x,
                lambda: tf.image.resize(x, (height, width), antialias=True),
            )
        x = tf.ensure_shape(x, [*x.shape[:-3], height, width, self.channels])
        return tf.clip_by_value(x / 255.0, 0.0, 1.0)

    # The network.

    @property
    def grid_shape(self):
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    def augment(self, images):
        """The constructor's random augmentation of a preprocessed batch; `fit`
        applies it to the training data only."""
        for layer in self.augmenters:
            images = layer(images, training=True)
        return images

    def call(self, images, training=None):
        x = self.embedding_dropout(self._embed(images), training=training)
        for block in self.blocks:
            x = block(x, training=training)
        x = self._pool(self.final_norm(x))
        return self.head(self.head_dropout(x, training=training))

    def _embed(self, images):
        return self.patch_embedding(images * 2.0 - 1.0)

    def _pool(self, tokens):
        if self.pooling == "token":
            return tokens[:, 0]
        return keras.ops.mean(tokens, axis=1)

    def _resolve_auto_jit_compile(self):
        # Keras's `jit_compile="auto"` means no XLA on a machine without an
        # accelerator; at the small-image sizes this network trains 1.1-1.35x
        # faster with XLA on two CPU cores (at vit_tiny_16's it is 17% slower:
        # bench/RESULTS.md), so here it means XLA wherever Keras's other rules
        # allow it (one replica, every layer compilable, no op determinism). Keras asks
        # this (private, Keras 3.15) method both in `compile` and when an
        # uncompiled model predicts, so a trained model and its reloaded
        # preset run the same compiled program and predict identically.
        from keras.src.trainers.trainer import model_supports_jit

        return tf.distribute.get_strategy().num_replicas_in_sync == 1 and model_supports_jit(self)

    def attention_rollout(self, images):
        """Attention rollout (Abnar & Zuidema, 2020) over the patch grid.

        Each block's weights, averaged over heads, plus the identity for the
        residual, renormalized and multiplied through the blocks; read at the
        class token (or averaged over the patch tokens with `"gap"`).

        Args:
            images: a batch of raw images.

        Returns:
            `(B, grid_height, grid_width)` float32, each map summing to 1.
        """
        x = self._embed(self.preprocess(images))
        tokens = x.shape[1]
        rollout = tf.eye(tokens, batch_shape=[tf.shape(x)[0]])
        for block in self.blocks:
            weights = tf.reduce_mean(tf.cast(block.attention_scores(x), tf.float32), axis=1)
            weights = weights + tf.eye(tokens)
            weights = weights / tf.reduce_sum(weights, axis=-1, keepdims=True)
            rollout = tf.matmul(weights, rollout)
            x = block(x, training=False)
        if self.pooling == "token":
            maps = rollout[:, 0, 1:]
        else:
            maps = tf.reduce_mean(rollout, axis=1)
        maps = maps / tf.reduce_sum(maps, axis=-1, keepdims=True)
        return tf.reshape(maps, (-1, *self.grid_shape)).numpy()

    def attention_maps(self, inputs, targets=None):
        x, maps = self._embed(self.preprocess(self.raw_array(inputs))), []
        every = np.ones((1, 1, 1, x.shape[1]), bool)
        for number, block in enumerate(self.blocks, 1):
            maps.append((f"block {number}", np.asarray(block.attention_scores(x)), every,
                         np.ones(x.shape[:2], bool)))
            x = block(x, training=False)
        return maps

    def save_attention_figure(self, images, path, count=6, targets=None):
        """Every head of every block on one image (`path`), and the
        attention rollout over the first `count` of `images` beside it
        (`<path stem>_rollout.png`)."""
        from zoo import report

        super().save_attention_figure(images, path)
        path = Path(path)
        rollout_path = path.with_name(f"{path.stem}_rollout{path.suffix}")
        images = self.raw_array(images)[:count]
        pixels = self.preprocess(images).numpy()
        names, probabilities = self.predict_labels(images)
        titles = [f"{name} ({p.max():.2f})" for name, p in zip(names, probabilities)]
        report.plot_attention_rollout(
            pixels, self.attention_rollout(images), titles, rollout_path,
            title=f"attention rollout over {self.num_layers} blocks",
        )
        return path

    # Configuration, presets and export.

    def architecture(self):
        return {
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "patch_size": self.patch_size,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "pooling": self.pooling,
            "attention": self.attention,
            "window_size": self.window_size,
            "dropout": self.dropout,
            "augmentation": self.augmentation,
        }

    def transfer_layer(self, source, target):
        """Position embeddings move to a new patch grid by bicubic interpolation."""
        if target is self.patch_embedding and source.grid_shape != target.grid_shape:
            for theirs, ours in zip(source.weights, target.weights):
                if ours is target.position_embeddings:
                    ours.assign(source.resized_position_embeddings(target.grid_shape))
                else:
                    ours.assign(theirs)
            return
        super().transfer_layer(source, target)

    def export(self, folder, version=None):
        """Exports a TF Serving SavedModel to `folder/<version>/`.

        Signatures, both returning `{"probabilities": float32[None, C],
        "label": tf.string[None], "label_id": int64[None]}`:

        - `serving_default`: `{"image_bytes": tf.string[None]}`, JPEG, PNG,
          BMP or GIF bytes (TF Serving's REST API takes them as
          `{"b64": ...}`), decoded, converted and resized in the graph;
        - `predict_images`: `{"images": uint8[None, None, None, None]}`.

        Loads with `tensorflow` alone. Bytes that are no image fail the
        request with an `InvalidArgumentError` naming the input.
        """
        module = _ImageClassifierServing(self)
        return export_saved_model(module, folder, {
            "serving_default": module.serve.get_concrete_function(),
            "predict_images": module.predict_images.get_concrete_function(),
        }, version)


class _ImageClassifierServing(ClassifierServing):
    """What the SavedModel tracks: the network and the labels."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        return self.outputs(self.classifier.preprocess(image_bytes))

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, None], tf.uint8, name="images")])
    def predict_images(self, images):
        return self.outputs(self.classifier.preprocess(images))


def _convert_channels(images, channels):
    """float `(..., C)` with C in 1-4 -> `channels` (1 or 3); alpha dropped."""
    def from_colour():
        rgb = images[..., :3]
        if channels == 3:
            return rgb
        return tf.reduce_sum(rgb * LUMA_WEIGHTS, axis=-1, keepdims=True)

    def from_gray():
        return tf.repeat(images[..., :1], channels, axis=-1)

    if images.shape[-1] is not None:
        return from_colour() if images.shape[-1] >= 3 else from_gray()
    converted = tf.cond(tf.shape(images)[-1] >= 3, from_colour, from_gray)
    return tf.ensure_shape(converted, [*images.shape[:-1], channels])


def _image_array(array):
    """Checks pixels `(N, H, W)` or `(N, H, W, C)` and returns uint8 `(N, H, W, C)`."""
    if array.dtype.kind == "f":
        raise TypeError(
            f"Images must be uint8 pixels (0-255). Received dtype {array.dtype}; "
            "for floats in [0, 1] pass (images * 255).round().astype('uint8')."
        )
    if array.dtype.kind not in "iu":
        raise TypeError(f"Images must be uint8 pixels (0-255). Received dtype {array.dtype}.")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or not 1 <= array.shape[-1] <= 4:
        raise ValueError(
            "Images must be shaped (N, H, W) or (N, H, W, C) with C in 1-4. "
            f"Received shape {array.shape}."
        )
    if 0 in array.shape[1:3]:
        raise ValueError(f"Images must not be empty. Received shape {array.shape}.")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"Pixel values must lie in [0, 255]. Received [{array.min()}, {array.max()}]."
            )
        array = array.astype(np.uint8)
    return array


def _read_image_file(path):
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No such image file: {path}")
    return path.read_bytes()
