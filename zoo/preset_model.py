"""The one loading contract every zoo task shares: `from_preset`, `save_to_preset`, `presets`.

`Cls.from_preset(handle, sha256=None, lora_rank=None, **overrides)` means the same for every
task: `handle` is anything `zoo.sources` resolves (a shipped name, a
packaged checkpoint, a zoo preset folder, a keras-hub preset, a Hugging Face
folder or cache snapshot, `hf://`, `kaggle://`); `sha256` pins a zoo preset
folder (the SHA-256 its `metadata.json` must have); `overrides` change what
the task allows (`adjustable`); `lora_rank` trains LoRA adapters on
the backbone instead of every weight (`zoo.lora`). What the handle holds picks the one
loader (`preset_loaders`): the task's own preset kind, or a pretrained body
(`body_loaders`) that gets a fresh head; anything else is refused by name.
"""

import functools
from pathlib import Path

from zoo import sources
from zoo.guarded_files import RefusedSource
from zoo.keras_compat import set_untracked
from zoo.lora import check_lora_rank, enable_lora, merged_weights
from zoo.presets import (
    KERAS_ARGUMENTS, _AssetFolder, load_checked_weights, load_preset, pinned, preset_config,
    save_preset, shipped_presets,
)


class _ShippedPresets:
    """`Model.presets`: `{name: folder}` of the presets shipped for that model."""

    def __get__(self, instance, owner):
        return shipped_presets(owner.presets_dir) if owner.presets_dir else {}


class PresetModel:
    """What every zoo model shares for presets: `from_preset`, `save_to_preset`
    and the list of shipped ones.

    A subclass sets `kind` (stored in the preset) and `presets_dir`, and
    extends `get_config()` with every constructor argument but those kept
    as asset files (vocabularies: `preset_assets()`, `write_assets()` and
    `assets_from_preset()`); `zoo.presets.preset_config` is what a preset
    stores of it.
    """

    kind = None
    presets_dir = None
    presets = _ShippedPresets()
    # The classes of a task's parts, for the tasks built of a backbone and
    # a preprocessor (`from_body`).
    backbone_cls = None
    preprocessor_cls = None
    # Configuration entries that may differ from a preset's when loading it.
    adjustable = ("dropout",)

    def preset_assets(self):
        """`{constructor argument: value}` stored as preset assets, not config."""
        return {}

    def _set_untracked(self, **attributes):
        # Tokenizers and vocabularies are replaced after the network is
        # built (zoo.keras_compat.set_untracked says why).
        set_untracked(self, **attributes)

    def write_assets(self):
        """`{file name: text}` written under the preset's `assets/`."""
        return {}

    @classmethod
    def assets_from_preset(cls, loaded):
        """Constructor arguments read back from a verified preset's assets."""
        return {}

    def use_assets(self, **assets):
        """Takes the constructor arguments `assets_from_preset` reads (a
        vocabulary) into a model built without them: `.keras` loading."""

    # Keras's `.keras` format: the configuration in the config, the assets
    # (vocabularies) as files beside the weights, as keras-hub's tokenizers
    # keep theirs.

    def save_assets(self, dir_path):
        if any(value is None for value in self.preset_assets().values()):
            return  # nothing learned yet
        for name, contents in self.write_assets().items():
            (Path(dir_path) / name).write_text(contents, encoding="utf-8")

    def load_assets(self, dir_path):
        folder = Path(dir_path)
        if any(folder.iterdir()):
            self.use_assets(**self.assets_from_preset(_AssetFolder(folder)))

    def inference_copy(self):
        """This network with its weights and without the optimizer: what a
        preset or an export holds (a compiled model carries the optimizer's
        slots, two per AdamW weight, which would triple either)."""
        adapted = bool(getattr(self, "lora", None))
        if getattr(self, "optimizer", None) is None and not adapted:
            return self
        arguments = {k: v for k, v in self.get_config().items() if k not in KERAS_ARGUMENTS}
        twin = type(self)(**arguments, **self.preset_assets())
        # LoRA adapters merged into their kernels: nothing new to serve,
        # and no extra matmuls per projection.
        twin.set_weights(merged_weights(self) if adapted else self.get_weights())
        return twin

    def save_to_preset(self, folder, metadata=None):
        """Writes config, weights and assets, checksummed, atomically."""
        return save_preset(
            folder, self.kind, preset_config(self), self.inference_copy().save_weights,
            assets=self.write_assets(), metadata=metadata,
        )

    @classmethod
    def named_presets(cls):
        """What `from_preset` takes by name: `{name: preset folder or
        zoo.sources.Packaged}`; the shipped presets unless a task adds bodies."""
        return cls.presets

    @classmethod
    def body_loaders(cls):
        """`{source key: source -> (backbone, preprocessor)}` of the
        pretrained bodies this task puts a fresh head on (none by default)."""
        return {}

    @classmethod
    def preset_loaders(cls):
        """`{source key: loader}`: the task's own presets and its bodies."""
        loaders = {key: functools.partial(cls._from_body_source, load_body)
                   for key, load_body in cls.body_loaders().items()}
        loaders[("zoo", cls.kind)] = cls._from_own_preset
        return loaders

    @classmethod
    def from_preset(cls, preset, sha256=None, lora_rank=None, **overrides):
        """Loads a preset or a pretrained body (see the module docstring).

        Args:
            preset: a shipped name (`named_presets()`), a zoo preset folder,
                or a body this task takes (`body_loaders`): a keras-hub
                preset, a Hugging Face folder, `hf://` or `kaggle://`.
            sha256: pins a zoo preset folder: the SHA-256 its
                `metadata.json` must have.
            lora_rank: trains rank-`lora_rank` LoRA adapters on the
                backbone's attention and feed-forward projections, the rest
                of the backbone frozen (`zoo.lora.enable_lora`); presets and
                exports get them merged. None: every weight trains.
            **overrides: any of `adjustable`; sizes that shape
                weights cannot change.

        Raises:
            ValueError: (`zoo.guarded_files.RefusedSource` for what the
                handle holds) naming what was received and what is taken.
        """
        check_lora_rank(lora_rank)
        if sha256 is not None:
            with pinned(preset, sha256, cls.named_presets()) as folder:
                model = cls.from_preset(folder, **overrides)
        else:
            cls.check_override_names(overrides)
            model = sources.load(preset, cls.preset_loaders(), cls.named_presets(),
                                 f"{cls.__name__}.from_preset", **overrides)
        if lora_rank is not None:
            enable_lora(model, lora_rank, preset)
        return model

    @classmethod
    def check_override_names(cls, overrides):
        """Refuses, before anything is read, an override no preset of this task takes."""

    @classmethod
    def _from_body_source(cls, load_body, source, **overrides):
        return cls.from_body(*cls.load_body_parts(load_body, source), **overrides)

    @classmethod
    def load_body_parts(cls, load_body, source):
        """`(backbone, preprocessor)` a body loader reads from `source`, each
        of the class this task declares (`backbone_cls`, `preprocessor_cls`)."""
        parts = load_body(source)
        for part, expected in zip(parts, (cls.backbone_cls, cls.preprocessor_cls)):
            if expected is not None and not isinstance(part, expected):
                raise RefusedSource(
                    f"{source.handle} holds a {type(part).__name__}; {cls.__name__} is built on "
                    f"a {expected.__name__}.")
        return parts

    @classmethod
    def from_body(cls, backbone, preprocessor, **overrides):
        """This task on a pretrained `backbone` and `preprocessor`, with a fresh head."""
        raise NotImplementedError

    @classmethod
    def _from_own_preset(cls, source, **overrides):
        """This task from a verified preset of its own kind."""
        loaded = load_preset(source.folder, cls.kind)
        cls.check_overrides(loaded.config, overrides)
        return cls.with_preset_weights(
            loaded, **{**loaded.config, **overrides, **cls.assets_from_preset(loaded)}
        )

    @classmethod
    def is_own_preset(cls, preset):
        """Whether `preset` names a zoo preset of this task's kind (read from
        its metadata alone), rather than a body or another model's preset."""
        return sources.zoo_kind(preset, cls.named_presets()) == cls.kind

    @classmethod
    def load_verified_preset(cls, preset):
        """The verified `Preset` of a shipped name or a preset folder of this task."""
        target = cls.named_presets().get(preset) if isinstance(preset, str) else None
        return load_preset(target if target is not None else preset, cls.kind)

    @classmethod
    def check_overrides(cls, config, overrides):
        unknown = set(overrides) - set(config)
        if unknown:
            raise ValueError(
                f"Unknown arguments {sorted(unknown)} for a {cls.kind} preset; "
                f"it is configured by {sorted(config)}."
            )
        changed = {
            k for k in overrides
            if k not in cls.adjustable and overrides[k] != config[k]
        }
        if changed:
            raise ValueError(
                f"Cannot change {sorted(changed)} of a pretrained preset: they "
                f"shape its weights. Only {list(cls.adjustable)} may differ."
            )

    @classmethod
    def with_preset_weights(cls, loaded, **arguments):
        """`cls(**arguments)` with the weights of the verified preset `loaded`."""
        model = cls(**arguments)
        load_checked_weights(model, loaded)
        return model
