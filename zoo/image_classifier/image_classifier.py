"""The image classifier task: a preprocessor, a Vision Transformer backbone and a head."""

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from zoo import presets as preset_io
from zoo.backbone import attention_through
from zoo.checkpoint_files import open_checkpoint
from zoo.classifier import HEAD_NAME, ClassifierModel, ClassifierServing
from zoo.export import export_saved_model, traced_signatures
from zoo.image_classifier.backbone import ImageBackbone
from zoo.image_classifier.preprocessor import (
    MAX_IMAGE_PIXELS, ImagePreprocessor, first_frame_pixels,
)
from zoo.keras_compat import xla_wherever_keras_allows
from zoo.presets import KERAS_ARGUMENTS, preset_config

KIND = "image_classifier"
BACKBONE_KIND = "image_backbone"
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
POOLINGS = ("token", "gap")
AUGMENTATIONS = ("flip", "translation", "rotation", "zoom")
FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")
# A network from scratch: `ImageClassifier(labels=..., **sizes)`, each size
# defaulting to these; pixels are normalized to [-1, 1] (mean and std 0.5).
FROM_SCRATCH_SIZES = dict(
    image_size=28, channels=1, patch_size=4, hidden_dim=64, num_layers=6, num_heads=4,
    intermediate_dim=128, attention="multi_head", window_size=None,
)
# What `from_preset` may change in a pretrained network (the rest shapes its weights).
# What one request to the exported model may hold by default (`export`): 32
# images of up to 8 MB, each declaring at most `MAX_IMAGE_PIXELS` pixels;
# the worst request they admit is measured in `bench/RESULTS.md` ("Serving
# limits").
MAX_REQUEST_IMAGES = 32
MAX_REQUEST_IMAGE_BYTES = 8 << 20
# The pixels all the images of one request may declare together (two of the
# largest image, or 32 of 1024 x 1024), checked from their headers before
# any is decoded: 32 small 16-bit RGBA PNGs each declaring 4096 x 4096 held
# a server for 61 s and 1.97 GB before this bound (`bench/RESULTS.md`).
MAX_REQUEST_PIXELS = 1 << 25

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
    """A Vision Transformer classifier that takes raw images: preprocessor, backbone, head.

    As keras-hub's tasks: `model.preprocessor` turns image bytes or pixels
    into normalized pixels (`ImagePreprocessor`: decoded, converted to the
    model's channels, resized, normalized with the checkpoint's mean and
    std), `model.backbone` turns pixels into patch tokens (`ImageBackbone`,
    a ViT built from keras_selfattn layers), and the head pools them (the
    class token, or the mean of the patch tokens) into class logits.
    Preprocessing runs in the `tf.data` pipeline and, the same code, inside
    the exported SavedModel; augmentation runs in training only.

    `fit`, `evaluate` and `predict` take uint8 arrays `(N, H, W)` or
    `(N, H, W, C)`, lists of images of any sizes, encoded image bytes, image
    file paths, a `tf.data.Dataset` of any of these, or a folder laid out as
    `class_name/*.png|jpg|jpeg|bmp|gif` (labels are the folder names,
    sorted, unless given with `labels=`).

    Build it from parts (fine-tuning), or give sizes for a new network:

        ImageClassifier(backbone=..., preprocessor=..., labels=["cat", "dog"])
        ImageClassifier(labels=["cat", "dog"], image_size=32, channels=3)

    `ImageClassifier.from_preset` loads a classifier preset, or puts a
    fresh head on a ViT: a keras-hub `vit_*` preset, a Hugging Face
    `google/vit-*` checkpoint, or a zoo `image_backbone` preset.

    Args:
        backbone: an `ImageBackbone` (or its config); None builds one from
            the sizes below.
        preprocessor: an `ImagePreprocessor` (or its config); None builds
            one for the backbone's images, with mean and std 0.5.
        num_classes: number of classes; defaults to `len(labels)`.
        labels: class names, stored with the model and returned by the export.
        pooling: `"token"` (class token) or `"gap"` (mean of the patch
            tokens); defaults to `"token"` when the backbone has a class
            token. A new network has one only with `"token"` (default `"gap"`).
        dropout: before the head; for a new network, in the blocks too.
        augmentation: None, or a dict with any of `flip` (None,
            `"horizontal"`, `"vertical"`, `"horizontal_and_vertical"`; off by
            default, right for digits), `translation` (fraction of the side),
            `rotation` (fraction of a full turn) and `zoom` (fraction), applied
            in training only, to pixels in [0, 1] (filling with black).
        image_size, channels, patch_size, hidden_dim, num_layers, num_heads,
            intermediate_dim, attention, window_size: sizes of a new network
            (`FROM_SCRATCH_SIZES`).

    Call arguments:
        pixels: `(B, height, width, channels)` float32 from the preprocessor.
        training: whether dropout is active.

    Returns:
        `(B, num_classes)` float32 logits.

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
    preprocesses_each_example = True
    kind = KIND
    presets_dir = PRESETS_DIR
    backbone_cls = ImageBackbone
    preprocessor_cls = ImagePreprocessor
    configurations = CONFIGURATIONS
    adjustable = ("dropout", "num_classes", "image_size", "augmentation", "attention",
                  "window_size", "pooling")
    from_scratch_sizes = FROM_SCRATCH_SIZES
    drop_remainder_in_training = True

    def __init__(self, backbone=None, preprocessor=None, *, num_classes=None, labels=None,
                 pooling=None, dropout=None, augmentation=None, **sizes):
        # What Keras's own config adds (`.keras` loading).
        keras_arguments = {k: sizes.pop(k) for k in KERAS_ARGUMENTS if k in sizes}
        unknown = set(sizes) - set(FROM_SCRATCH_SIZES)
        if unknown:
            raise TypeError(f"Unknown arguments {sorted(unknown)}; a new network takes "
                            f"{sorted(FROM_SCRATCH_SIZES)}.")
        if pooling not in (None, *POOLINGS):
            raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
        if backbone is not None and sizes:
            raise ValueError(f"Give either a backbone or the sizes of a new one, not both. "
                             f"Received a backbone and {sorted(sizes)}.")
        augmentation = _check_augmentation(augmentation)
        super().__init__(num_classes, labels, **keras_arguments)
        if backbone is None:
            pooling = pooling or "gap"
            backbone = ImageBackbone(
                **{**FROM_SCRATCH_SIZES, **sizes}, class_token=pooling == "token",
                dropout=0.1 if dropout is None else dropout, name="backbone")
        elif isinstance(backbone, dict):
            backbone = ImageBackbone.from_config({**backbone, "name": "backbone"})
        pooling = pooling or ("token" if backbone.class_token else "gap")
        if pooling == "token" and not backbone.class_token:
            raise ValueError("pooling='token' needs a backbone with a class token; this one "
                             "has none (use pooling='gap').")
        if preprocessor is None:
            preprocessor = ImagePreprocessor(backbone.image_size, backbone.channels)
        elif isinstance(preprocessor, dict):
            preprocessor = ImagePreprocessor(**preprocessor)
        if (preprocessor.image_size, preprocessor.channels) != (backbone.image_size,
                                                                 backbone.channels):
            raise ValueError(
                f"The preprocessor gives {preprocessor.image_size} images with "
                f"{preprocessor.channels} channel(s), the backbone takes {backbone.image_size} "
                f"with {backbone.channels}.")
        self.backbone = backbone
        # A plain attribute: the preprocessor holds no weights.
        self._set_untracked(preprocessor=preprocessor)
        self.pooling = pooling
        self.dropout = backbone.dropout if dropout is None else dropout
        self.augmentation = augmentation
        # The augmentation layers run in the training pipeline, not in the
        # network (see `augment`); untracked, they hold no saved state and
        # do not stop XLA from compiling the network.
        self._set_untracked(augmenters=self._augmenters(augmentation or {}))
        self.head_dropout = keras.layers.Dropout(self.dropout, name="head_dropout")
        self.head = keras.layers.Dense(self.num_classes, dtype="float32", name=HEAD_NAME)
        # Calling the network once creates every weight, so presets and
        # checkpoints load into a complete model.
        self(np.zeros((1, *backbone.image_size, backbone.channels), "float32"))

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
            from zoo.image_classifier.image_folder import read_image_folder

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
        """A batch of raw images (bytes `(B,)`, or uint8 `(B, H, W[, C])` of
        any size and channels) -> the backbone's pixels (`ImagePreprocessor`)."""
        return self.preprocessor(images)

    def preprocess_example(self, image):
        """One raw image (bytes or uint8 `(H, W[, C])`) -> `(height, width, channels)`."""
        return self.preprocessor.example(image)

    # The network.

    @property
    def image_size(self):
        return self.backbone.image_size

    @property
    def channels(self):
        return self.backbone.channels

    @property
    def grid_shape(self):
        return self.backbone.grid_shape

    def augment(self, pixels):
        """The constructor's random augmentation of a preprocessed batch; `fit`
        applies it to the training data only. The layers see pixels in
        [0, 1], so what they fill in is black whatever the normalization."""
        if not self.augmenters:
            return pixels
        images = self.preprocessor.denormalize(pixels)
        for layer in self.augmenters:
            images = layer(images, training=True)
        return self.preprocessor.normalize(images)

    def call(self, pixels, training=None):
        tokens = self.backbone(pixels, training=training)["sequence_output"]
        if self.pooling == "token":
            pooled = tokens[:, 0]
        else:
            pooled = keras.ops.mean(tokens[:, int(self.backbone.class_token):], axis=1)
        return self.head(self.head_dropout(pooled, training=training))

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
        x = self.backbone.embed(self.preprocess(images))
        tokens = x.shape[1]
        rollout = tf.eye(tokens, batch_shape=[tf.shape(x)[0]])
        for block_weights in attention_through(self.backbone.blocks, x)[0]:
            weights = tf.reduce_mean(tf.cast(block_weights, tf.float32), axis=1)
            weights = weights + tf.eye(tokens)
            weights = weights / tf.reduce_sum(weights, axis=-1, keepdims=True)
            rollout = tf.matmul(weights, rollout)
        if self.pooling == "token":
            maps = rollout[:, 0, 1:]
        else:
            maps = tf.reduce_mean(rollout, axis=1)
        maps = maps / tf.reduce_sum(maps, axis=-1, keepdims=True)
        return tf.reshape(maps, (-1, *self.grid_shape)).numpy()

    def head_attention(self, images):
        """Where each head of the last block looks: the class token's
        weights over the patches (with `"token"` pooling, the token the head
        reads), else the mean over the patch queries.

        Args:
            images: a batch of raw images.

        Returns:
            `(B, num_heads, grid_height, grid_width)` float32; each map is
            the share of its head's attention on each patch.
        """
        _, weights, _, _ = self.attention_maps(images)[-1]
        weights = np.asarray(weights, np.float32)
        first_patch = int(self.backbone.class_token)
        if self.pooling == "token":
            maps = weights[:, :, 0, first_patch:]
        else:
            maps = weights[:, :, first_patch:, first_patch:].mean(axis=2)
        return maps.reshape(*maps.shape[:2], *self.grid_shape)

    def attention_maps(self, inputs, targets=None):
        x = self.backbone.embed(self.preprocess(self.raw_array(inputs)))
        every = np.ones((1, 1, 1, x.shape[1]), bool)
        return [(f"block {number}", np.asarray(weights), every, np.ones(x.shape[:2], bool))
                for number, weights in enumerate(attention_through(self.backbone.blocks, x)[0], 1)]

    def save_attention_figure(self, images, path, count=6, labels=None, matrices=False):
        """Attention figures of the first `count` of `images`, titled with
        the predicted label (and the true one from `labels`):

        - `path`: per image, where each head of the last block looks, as a
          heat map over the image (`head_attention`);
        - `<path stem>_rollout.png`: attention rollout over every block;
        - with `matrices`, `<path stem>_matrices.png`: every head's
          patch-to-patch weights on the first image, block by block.

        Returns:
            The paths written.
        """
        from zoo import report

        path = Path(path)
        images = self.raw_array(images)[:count]
        pixels = self.preprocessor.denormalize(self.preprocess(images)).numpy()
        names, probabilities = self.predict_labels(images)
        titles = [f"predicted {name} ({p.max():.2f})" for name, p in zip(names, probabilities)]
        if labels is not None:
            titles = [f"true {true}\n{title}" for true, title in zip(np.asarray(labels), titles)]
        looks = ("the class token's attention" if self.pooling == "token"
                 else "attention averaged over the patch queries")
        written = [report.plot_attention_over_images(
            pixels, self.head_attention(images), titles, path,
            title=f"where each head of the last block (of {self.backbone.num_layers}) looks: {looks}")]
        written.append(report.plot_attention_rollout(
            pixels, self.attention_rollout(images), titles,
            path.with_name(f"{path.stem}_rollout{path.suffix}"),
            title=f"attention rollout over {self.backbone.num_layers} blocks"))
        if matrices:
            written.extend(super().save_attention_figure(
                images, path.with_name(f"{path.stem}_matrices{path.suffix}")))
        return written

    # Configuration, presets and export.

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling, "dropout": self.dropout,
                "augmentation": self.augmentation, "backbone": preset_config(self.backbone),
                "preprocessor": self.preprocessor.get_config()}

    @classmethod
    def body_loaders(cls):
        return body_loaders()

    @classmethod
    def from_body(cls, backbone, preprocessor, num_classes=None, labels=None, **overrides):
        """A classifier on a pretrained `backbone` and `preprocessor`, with the
        `overrides` applied and a fresh head."""
        task = {name: overrides.pop(name) for name in ("pooling", "dropout", "augmentation")
                if name in overrides}
        if "dropout" in task:
            overrides["dropout"] = task["dropout"]
        if "image_size" in overrides:
            preprocessor = preprocessor.with_image_size(overrides["image_size"])
        backbone = backbone.with_changes(**overrides)
        return cls(backbone=backbone, preprocessor=preprocessor, num_classes=num_classes,
                   labels=labels, **task)

    def export(self, folder, version=None, max_images=MAX_REQUEST_IMAGES,
               max_image_bytes=MAX_REQUEST_IMAGE_BYTES, max_request_pixels=MAX_REQUEST_PIXELS):
        """Exports a TF Serving SavedModel to `folder/<version>/`.

        Signatures, both returning `{"probabilities": float32[None, C],
        "label": tf.string[None], "label_id": int64[None]}`:

        - `serving_default`: `{"image_bytes": tf.string[None]}`, JPEG, PNG,
          BMP or GIF bytes (TF Serving's REST API takes them as
          `{"b64": ...}`), decoded, converted and resized in the graph;
        - `predict_images`: `{"images": uint8[None, None, None, None]}`.

        Loads with `tensorflow` alone. Bytes that are no image fail the
        request with an `InvalidArgumentError` naming the input, and so does
        a request of more than `max_images` images, an image of more than
        `max_image_bytes` bytes, one whose header declares more than
        `MAX_IMAGE_PIXELS` pixels, or images declaring more than
        `max_request_pixels` pixels together (each checked before
        decoding); an empty request gets empty outputs.
        """
        module = _ImageClassifierServing(self.inference_copy(), max_images, max_image_bytes,
                                         max_request_pixels)
        return export_saved_model(module, folder, traced_signatures({
            "serving_default": (module.serve,
                                [tf.TensorSpec([None], tf.string, name="image_bytes")]),
            "predict_images": (module.predict_images,
                               [tf.TensorSpec([None, None, None, None], tf.uint8, name="images")]),
        }), version)

    # Keras's private method, overridden.

    def _resolve_auto_jit_compile(self):
        # Keras's `jit_compile="auto"` means no XLA on a machine without an
        # accelerator; at the small-image sizes this network trains 1.1-1.35x
        # faster with XLA on two CPU cores (at vit_tiny_16's it is 17% slower:
        # bench/RESULTS.md), so here it means XLA wherever Keras's other rules
        # allow it. Keras asks this private method both in `compile` and when
        # an uncompiled model predicts, so a trained model and its reloaded
        # preset run the same compiled program and predict identically.
        return xla_wherever_keras_allows(self)


class _ImageClassifierServing(ClassifierServing):
    """What the SavedModel tracks: the network and the labels."""

    def __init__(self, classifier, max_images, max_image_bytes, max_request_pixels):
        super().__init__(classifier)
        self.max_images, self.max_image_bytes = int(max_images), int(max_image_bytes)
        self.max_request_pixels = int(max_request_pixels)

    def _bounded(self, inputs, count, largest, limit, what, pixels):
        checks = [
            tf.debugging.assert_less_equal(
                count, self.max_images,
                message=f"A request holds at most {self.max_images} images (max_images)."),
            tf.debugging.assert_less_equal(
                largest, tf.cast(limit, largest.dtype),
                message=f"An image holds at most {limit} {what}."),
        ]
        with tf.control_dependencies(checks):
            # Read from the headers only after the count and sizes hold.
            pixels = pixels()
        total = tf.debugging.assert_less_equal(
            pixels, tf.constant(self.max_request_pixels, tf.int64),
            message=f"A request's images declare at most {self.max_request_pixels} pixels "
                    "together (max_request_pixels).")
        with tf.control_dependencies([total]):
            inputs = tf.identity(inputs)
        return tf.cond(count > 0,
                       lambda: self.outputs(self.classifier.preprocess(inputs)),
                       lambda: self.empty_outputs())

    def serve(self, image_bytes):
        return self._bounded(image_bytes, tf.size(image_bytes),
                             tf.reduce_max(tf.concat([tf.strings.length(image_bytes), [0]], 0)),
                             self.max_image_bytes, "bytes (max_image_bytes)",
                             lambda: _request_pixels(image_bytes))

    def predict_images(self, images):
        shape = tf.shape(images)
        return self._bounded(images, shape[0], shape[1] * shape[2], MAX_IMAGE_PIXELS,
                             "pixels (MAX_IMAGE_PIXELS)",
                             lambda: tf.reduce_prod(tf.cast(shape[:3], tf.int64)))


def _request_pixels(image_bytes):
    """The pixels a request's images declare together, each counted at most
    `MAX_IMAGE_PIXELS`: an image over its own bound is refused by its index
    as it is decoded, with the message that names it."""
    pixels = tf.map_fn(first_frame_pixels, image_bytes, fn_output_signature=tf.int64)
    return tf.reduce_sum(tf.minimum(pixels, MAX_IMAGE_PIXELS))


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


def save_backbone_preset(folder, backbone, preprocessor, metadata=None):
    """Writes an image body as a checksummed zoo preset of kind `image_backbone`."""
    return preset_io.save_backbone_preset(folder, BACKBONE_KIND, backbone, preprocessor,
                                          metadata=metadata)


def load_backbone_preset(folder, kind=BACKBONE_KIND):
    """`(backbone, preprocessor)` of a verified `image_backbone` preset, or of
    an image classifier preset without its head."""
    return preset_io.load_backbone_preset(
        folder, kind, ImageBackbone,
        lambda loaded: ImagePreprocessor(**loaded.config["preprocessor"]),
        weights_group=None if kind == BACKBONE_KIND else "backbone")


def load_converted(source):
    """`(backbone, preprocessor)` of a checked ViT checkpoint."""
    from zoo.image_classifier import convert

    with open_checkpoint(source.folder, source.handle) as checkpoint:
        return convert.load_checkpoint(checkpoint)


def load_body(handle):
    """`(backbone, preprocessor)` of any image body handle, through the one door."""
    from zoo.sources import load

    return load(handle, body_loaders(), None, "an image body")


def body_loaders():
    """`{source key: source -> (backbone, preprocessor)}` of every image body:
    a zoo `image_backbone` preset, an image classifier preset (its backbone),
    a Hugging Face ViT, a keras-hub ViT preset."""
    loaders = {("zoo", kind): lambda source, kind=kind: load_backbone_preset(source.folder, kind)
               for kind in (BACKBONE_KIND, KIND)}
    return {**loaders, ("hugging_face", "vit"): load_converted,
            ("keras_hub", "ViTBackbone"): load_converted}


ImageBackbone.serve_bodies(body_loaders, ImageClassifier.named_presets)
