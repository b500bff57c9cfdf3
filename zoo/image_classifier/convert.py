"""ViT checkpoints (keras-hub presets, Hugging Face folders) -> a zoo image body.

keras-hub reads the checkpoint (`keras_hub.models.Backbone.from_preset`: its
`vit_*` presets, `kaggle://` and `hf://` handles, local folders; a Hugging
Face `google/vit-*` folder through its own converter); this module maps the
weights of the `ViTBackbone` it gets into an `ImageBackbone` built from
keras_selfattn layers, and configures an `ImagePreprocessor` with the
checkpoint's mean and std. There is no second weight parser here.

- Blocks: keras-hub's `ViTEncoderBlock` (pre-norm, `MultiHeadAttention`, a
  GELU MLP) maps onto `TransformerEncoderBlock(normalize_first=True)` sublayer
  by sublayer; the patch convolution, class token, position table and final
  layer norm onto `PatchEmbedding` and the backbone's final norm.
- Layer-norm epsilon: a Hugging Face `config.json` gives it
  (`layer_norm_eps`, 1e-12 for `google/vit-*`); keras-hub's converter leaves
  it at its default 1e-6, which this module does not copy.
- Mean and std: a Hugging Face folder's `preprocessor_config.json`
  (`image_mean`, `image_std`, `rescale_factor`); a keras-hub preset's image
  converter (`scale`, `offset`); 0.5 and 0.5 when neither is there (what
  every ViT checkpoint uses).
"""

import numpy as np

from zoo.checkpoint_files import (
    check_safetensors, checkpoint_format, has_file, hub_backbone, read_json,
)
from zoo.image_classifier.backbone import ImageBackbone
from zoo.image_classifier.preprocessor import ImagePreprocessor

HF_MODEL_TYPES = ("vit",)
DEFAULT_MEAN_STD = (0.5, 0.5)


def is_image_checkpoint(handle):
    """Whether a keras-hub preset or Hugging Face folder holds a ViT (read
    from its `config.json` alone, without loading weights)."""
    try:
        config, hugging_face = checkpoint_format(handle)
    except ValueError:
        return False
    if hugging_face:
        return config.get("model_type") in HF_MODEL_TYPES
    return config.get("class_name") == "ViTBackbone" or "ViT" in str(
        config.get("registered_name", ""))


def load_checkpoint(handle):
    """`(ImageBackbone, ImagePreprocessor)` of a keras-hub ViT preset or a
    Hugging Face ViT checkpoint (a folder, or an `hf://` / `kaggle://` handle).

    Raises:
        ValueError: naming what is missing or unsupported.
    """
    handle = str(handle)
    config, hugging_face = checkpoint_format(handle)
    if hugging_face:
        if config["model_type"] not in HF_MODEL_TYPES:
            raise ValueError(f"{handle} holds a Hugging Face {config['model_type']!r} "
                             f"checkpoint; the zoo converts {HF_MODEL_TYPES} into image models.")
        check_safetensors(handle)
    hub = hub_backbone(handle)
    if type(hub).__name__ != "ViTBackbone":
        raise ValueError(f"{handle} holds a {type(hub).__name__} checkpoint; the zoo converts "
                         "ViT (ViTBackbone) into image models.")
    height, width, channels = hub.image_shape
    rows, columns = hub.patch_size
    missing = [name for name in ("use_mha_bias", "use_mlp_bias", "use_patch_bias")
               if not getattr(hub, name)]
    if rows != columns or missing or hub.data_format != "channels_last":
        raise ValueError(
            f"{handle}: the zoo converts ViTs with square patches, every bias and "
            f"channels-last images. Received patch_size={hub.patch_size}, without "
            f"{missing or 'no bias'}, data_format={hub.data_format!r}.")
    epsilon = hub.layer_norm_epsilon
    if hugging_face:
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{handle}: hidden_act={config['hidden_act']!r} is not supported; "
                             "expected 'gelu'.")
        epsilon = float(config.get("layer_norm_eps", 1e-12))
    backbone = ImageBackbone(
        image_size=[height, width], channels=channels, patch_size=rows,
        num_layers=hub.num_layers, num_heads=hub.num_heads, hidden_dim=hub.hidden_dim,
        intermediate_dim=hub.mlp_dim, class_token=hub.use_class_token,
        layer_norm_epsilon=epsilon, dropout=0.0)
    _assign(backbone, hub, handle)
    mean, std = (_hugging_face_mean_std(handle) if hugging_face
                 else _keras_hub_mean_std(handle, channels))
    return backbone, ImagePreprocessor([height, width], channels, mean=mean, std=std)


def _hugging_face_mean_std(handle):
    settings = read_json(handle, "preprocessor_config.json") or {}
    if not settings.get("do_normalize", True):
        mean, std = 0.0, 1.0
    else:
        mean = settings.get("image_mean", DEFAULT_MEAN_STD[0])
        std = settings.get("image_std", DEFAULT_MEAN_STD[1])
    rescale = settings.get("rescale_factor", 1 / 255) if settings.get("do_rescale", True) else 1
    if not np.isclose(rescale, 1 / 255):
        raise ValueError(f"{handle}/preprocessor_config.json: rescale_factor={rescale!r}; "
                         "the zoo reads checkpoints that scale pixels by 1/255.")
    return mean, std


def _keras_hub_mean_std(handle, channels):
    """Mean and std from a keras-hub image converter's `x * scale + offset`
    on 0-255 pixels: `std = 1 / (255 scale)`, `mean = -offset std`."""
    import keras_hub

    if not has_file(handle, "image_converter.json"):
        return DEFAULT_MEAN_STD
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(handle)
    except (FileNotFoundError, OSError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"keras-hub cannot read the image converter of {handle}: "
                         f"{error}") from None
    scale = np.broadcast_to(np.asarray(converter.scale if converter.scale is not None else 1.0,
                                       "float64"), (channels,))
    offset = np.broadcast_to(np.asarray(converter.offset if converter.offset is not None
                                        else 0.0, "float64"), (channels,))
    std = 1.0 / (255.0 * scale)
    return (-offset * std).tolist(), std.tolist()


def _assign(backbone, hub, handle):
    embedding = hub.get_layer("vit_patching_and_embedding")
    encoder = hub.get_layer("vit_encoder")
    ours = backbone.patch_embedding
    pairs = list(zip(ours.projection.weights, embedding.patch_embedding.get_weights()))
    if backbone.class_token:
        pairs.append((ours.class_token, np.asarray(embedding.class_token)))
    pairs.append((ours.position_embeddings,
                  np.asarray(embedding.position_embedding.embeddings)[None]))
    for block, layer in zip(backbone.blocks, encoder.encoder_layers):
        for name, theirs in (("attention_norm", layer.layer_norm_1),
                             ("attention_layer", layer.mha),
                             ("feed_forward_norm", layer.layer_norm_2),
                             ("intermediate_dense", layer.mlp.dense_1),
                             ("output_dense", layer.mlp.dense_2)):
            pairs += zip(getattr(block, name).weights, theirs.get_weights())
    pairs += zip(backbone.final_normalization.weights, encoder.layer_norm.get_weights())
    for variable, value in pairs:
        if tuple(variable.shape) != np.shape(value):
            raise ValueError(f"{handle}: cannot map a weight of shape {np.shape(value)} into "
                             f"{variable.path} {tuple(variable.shape)}.")
        variable.assign(value)
