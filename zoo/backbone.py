"""What the zoo's backbones share: the configuration a preset stores, and copies with changes."""

import keras


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
