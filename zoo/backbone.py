"""What the zoo's backbones share: the configuration a preset stores, and copies with changes."""

import keras

from zoo import sources
from zoo.presets import pinned


class Backbone(keras.Model):
    """Base of `TextBackbone` and `ImageBackbone`, functional models whose
    constructor arguments are their whole configuration.

    A subclass sets `adjustable` (what `with_changes` may change: no weight
    depends on it, or `carried_over` adapts the weight) and implements
    `get_config`.
    """

    adjustable = ()

    def with_changes(self, **changes):
        """A new backbone with `changes` to its configuration and this one's
        weights (see `carried_over`); this one when nothing changes."""
        unknown = set(changes) - set(self.adjustable)
        if unknown:
            raise ValueError(f"Only {list(self.adjustable)} of a pretrained backbone may change. "
                             f"Received: {sorted(unknown)}")
        config = {**self.architecture(), **changes}
        if config == self.architecture():
            return self
        other = type(self)(**config)
        for ours, theirs in zip(self.weights, other.weights):
            theirs.assign(self.carried_over(ours, theirs, other))
        return other

    def carried_over(self, ours, theirs, other):
        """The value of `other`'s weight `theirs` from this backbone's `ours`."""
        return ours

    def architecture(self):
        """The configuration without Keras's `name` and `trainable`: what a
        preset stores."""
        return {k: v for k, v in self.get_config().items() if k not in ("name", "trainable")}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # `from_preset`, as every task has it (zoo.preset_model): a backbone is
    # read from what its task takes, and from the task's own presets.

    @classmethod
    def task_cls(cls):
        """The task built on this backbone (imported when asked: the task
        module imports the backbone's)."""
        raise NotImplementedError

    @classmethod
    def named_presets(cls):
        """`{name: preset folder or zoo.sources.Packaged}` taken by name: the task's."""
        return cls.task_cls().named_presets()

    @classmethod
    def body_loaders(cls):
        """`{source key: source -> (backbone, preprocessor)}` of every source
        holding a backbone of this class: the task's bodies and its presets."""
        task = cls.task_cls()
        return {**task.body_loaders(), ("zoo", task.kind): _task_body(task)}

    @classmethod
    def from_preset(cls, preset, sha256=None, **changes):
        """The backbone a handle holds: a body preset, a task preset (its
        backbone), or a checkpoint; the same handles, `sha256` pinning and
        refusals as the tasks' `from_preset`. `changes` go to `with_changes`.
        """
        if sha256 is not None:
            with pinned(preset, sha256, cls.named_presets()) as folder:
                return cls.from_preset(folder, **changes)
        loaders = {key: (lambda source, load=load: load(source)[0])
                   for key, load in cls.body_loaders().items()}
        backbone = sources.load(preset, loaders, cls.named_presets(),
                                f"{cls.__name__}.from_preset")
        return backbone.with_changes(**changes)


def _task_body(task_cls):
    """A body loader reading the backbone and preprocessor of `task_cls`'s presets."""
    def load(source):
        task = task_cls.from_preset(source.folder)
        return task.backbone, task.preprocessor

    return load


def attention_through(blocks, x, padding_mask=None):
    """Runs `x` through encoder `blocks` as the forward pass does (training
    off), keeping each block's attention weights on the input it receives.

    Args:
        blocks: `TransformerEncoderBlock`s, in order.
        x: the first block's input `(B, T, dim)`.
        padding_mask: `(B, T)` bool, True on real tokens, or None.

    Returns:
        `(weights, output)`: a `(B, heads, T, T)` tensor per block, and the
        last block's output.
    """
    weights = []
    for block in blocks:
        weights.append(block.attention_scores(x, padding_mask=padding_mask))
        x = block(x, padding_mask=padding_mask, training=False)
    return weights, x
