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

from zoo.checkpoint_files import RefusedSource, check_number, hub_backbone
from zoo.image_classifier.backbone import ImageBackbone
from zoo.image_classifier.preprocessor import ImagePreprocessor

HF_MODEL_TYPES = ("vit",)
DEFAULT_MEAN_STD = (0.5, 0.5)


def load_checkpoint(checkpoint):
    """`(ImageBackbone, ImagePreprocessor)` of a checked keras-hub ViT preset
    or Hugging Face ViT checkpoint (`zoo.checkpoint_files.Checkpoint`).

    Raises:
        ValueError: naming what is missing or unsupported.
    """
    config, hugging_face, handle = checkpoint.config, checkpoint.hugging_face, checkpoint.origin
    if hugging_face and config["model_type"] not in HF_MODEL_TYPES:
        raise RefusedSource(f"{handle} holds a Hugging Face {config['model_type']!r} "
                            f"checkpoint; the zoo converts {HF_MODEL_TYPES} into image models.")
    hub = hub_backbone(checkpoint)
    if type(hub).__name__ != "ViTBackbone":
        raise RefusedSource(f"{handle} holds a {type(hub).__name__} checkpoint; the zoo converts "
                            "ViT (ViTBackbone) into image models.")
    height, width, channels = hub.image_shape
    rows, columns = hub.patch_size
    missing = [name for name in ("use_mha_bias", "use_mlp_bias", "use_patch_bias")
               if not getattr(hub, name)]
    if rows != columns or missing or hub.data_format != "channels_last":
        raise RefusedSource(
            f"{handle}: the zoo converts ViTs with square patches, every bias and "
            f"channels-last images. Received patch_size={hub.patch_size}, without "
            f"{missing or 'no bias'}, data_format={hub.data_format!r}.")
    epsilon = hub.layer_norm_epsilon
    if hugging_face:
        if config.get("hidden_act", "gelu") != "gelu":
            raise RefusedSource(f"{handle}: hidden_act={config['hidden_act']!r} is not "
                                "supported; expected 'gelu'.")
        epsilon = check_number(config, "layer_norm_eps", checkpoint.where("config.json"),
                               default=1e-12)
    backbone = ImageBackbone(
        image_size=[height, width], channels=channels, patch_size=rows,
        num_layers=hub.num_layers, num_heads=hub.num_heads, hidden_dim=hub.hidden_dim,
        intermediate_dim=hub.mlp_dim, class_token=hub.use_class_token,
        layer_norm_epsilon=epsilon, dropout=0.0)
    _assign(backbone, hub, handle)
    mean, std = (_hugging_face_mean_std(checkpoint) if hugging_face
                 else _keras_hub_mean_std(checkpoint, channels))
    return backbone, ImagePreprocessor([height, width], channels, mean=mean, std=std)


def _hugging_face_mean_std(checkpoint):
    where = checkpoint.where("preprocessor_config.json")
    settings = checkpoint.json("preprocessor_config.json") or {}
    for name in ("do_normalize", "do_rescale"):
        if not isinstance(settings.get(name, True), bool):
            raise RefusedSource(f"{where}: {name}={settings[name]!r}; expected true or false.")
    if not settings.get("do_normalize", True):
        mean, std = 0.0, 1.0
    else:
        mean = _finite(settings.get("image_mean", DEFAULT_MEAN_STD[0]), "image_mean", where)
        std = _finite(settings.get("image_std", DEFAULT_MEAN_STD[1]), "image_std", where,
                      positive=True)
    rescale = (check_number(settings, "rescale_factor", where, default=1 / 255)
               if settings.get("do_rescale", True) else 1)
    if not np.isclose(rescale, 1 / 255):
        raise RefusedSource(f"{where}: rescale_factor={rescale!r}; the zoo reads checkpoints "
                            "that scale pixels by 1/255.")
    return mean, std


def _finite(value, name, where, positive=False):
    """A number or list of numbers, finite (and above zero when `positive`)."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
            and (v > 0 or not positive) for v in values):
        raise RefusedSource(f"{where}: {name}={value!r}; expected a finite number or a list of "
                            f"them{', each above 0' if positive else ''}.")
    return value


def _keras_hub_mean_std(checkpoint, channels):
    """Mean and std from a keras-hub image converter's `x * scale + offset`
    on 0-255 pixels: `std = 1 / (255 scale)`, `mean = -offset std`."""
    import keras_hub

    if not checkpoint.has("image_converter.json"):
        return DEFAULT_MEAN_STD
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(str(checkpoint.folder))
    except (FileNotFoundError, OSError, KeyError, TypeError, ValueError) as error:
        raise RefusedSource(f"keras-hub cannot read the image converter of "
                            f"{checkpoint.origin}: {error}") from None
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
            raise RefusedSource(f"{handle}: cannot map a weight of shape {np.shape(value)} into "
                             f"{variable.path} {tuple(variable.shape)}.")
        variable.assign(value)
