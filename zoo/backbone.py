"""What the zoo's backbones share: the configuration a preset stores, and copies with changes."""

import keras
import numpy as np

from zoo import sources
from zoo.presets import pinned, preset_config


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
        ours = preset_config(self)
        config = {**ours, **changes}
        if config == ours:
            return self
        other = type(self)(**config)
        for ours, theirs in zip(self.weights, other.weights):
            theirs.assign(self.carried_over(ours, theirs, other))
        return other

    def carried_over(self, ours, theirs, other):
        """The value of `other`'s weight `theirs` from this backbone's `ours`."""
        return ours

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # `from_preset`, as every task has it (zoo.preset_model). Where a
    # backbone comes from (checkpoints, body presets, its tasks' presets) is
    # known to the modules that read them, which import the backbone's
    # module: they hand it over (`serve_bodies`) when their package is
    # imported, so that the backbone's module imports none of them.
    _bodies = None

    @classmethod
    def serve_bodies(cls, body_loaders, named_presets):
        """Says where this backbone class is read from: `body_loaders()` ->
        `{source key: source -> (backbone, preprocessor)}`, `named_presets()`
        -> `{name: preset folder or zoo.sources.Packaged}`."""
        cls._bodies = (body_loaders, named_presets)

    @classmethod
    def named_presets(cls):
        """`{name: preset folder or zoo.sources.Packaged}` taken by name."""
        return cls._bodies[1]() if cls._bodies else {}

    @classmethod
    def body_loaders(cls):
        """`{source key: source -> (backbone, preprocessor)}` of every source
        holding a backbone of this class: bodies, checkpoints, task presets."""
        return cls._bodies[0]() if cls._bodies else {}

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


# A figure's panel holds at most this many query and key cells: a longer
# sequence's weights are max-pooled into them.
SUMMARY_CELLS = 256
# Weights read at once by `summarize_attention_through`: (B, H, rows, T)
# float32 of 16 MB (their statistics take a few float64 copies), so a long
# sequence never holds its `T x T` weights.
ROW_CHUNK_ELEMENTS = 1 << 22


def summarize_attention_through(blocks, x, padding_mask):
    """`attention_through`'s weights, read a few query rows at a time and
    summarized (`zoo.report.LayerAttention` per block): memory grows with
    `T`, never with `T x T`.

    Args:
        blocks: `TransformerEncoderBlock`s, in order.
        x: the first block's input `(B, T, dim)`.
        padding_mask: `(B, T)` bool, True on real tokens (which come first).

    Returns:
        A `LayerAttention` per block, named `"block N"`; its `pooled` panel
        covers the first example's real tokens in at most `SUMMARY_CELLS`
        cells a side.
    """
    from zoo.report import LayerAttention, max_pool, row_sums

    mask = np.asarray(padding_mask, bool)
    batch, length = mask.shape
    real = mask[0]
    cell = max(1, -(-int(real.sum()) // SUMMARY_CELLS))
    layers = []
    for number, block in enumerate(blocks, 1):
        rows = ROW_CHUNK_ELEMENTS // (batch * block.num_heads * length) // cell * cell
        rows = max(cell, rows)
        # A long sequence in a local window: its band, and its global token.
        window = getattr(block.attention_layer, "window_size", None) if cell > 1 else None
        global_tokens = getattr(block.attention_layer, "global_tokens", 0) if window else 0
        sums, parts = None, {"pooled": [], "band": [], "column": []}
        global_row = None
        for start in range(0, length, rows):
            stop = min(length, start + rows)
            weights = np.asarray(block.attention_scores(
                x, padding_mask=padding_mask, query_rows=(start, stop)))
            chunk = row_sums(weights, mask[:, None, None, :], mask[:, start:stop])
            sums = chunk if sums is None else tuple(map(np.add, sums, chunk))
            first = weights[0][:, real[start:stop]][:, :, real]
            if not first.shape[1]:
                continue
            parts["pooled"].append(max_pool(first, cell))
            if window:
                parts["band"].append(_band(first, start, window, cell))
            if global_tokens:
                # Copies: a view would keep each chunk's weights alive.
                parts["column"].append(first[:, :, 0].copy())
                if start == 0:
                    global_row = first[:, 0].copy()
        joined = {name: np.concatenate(values, axis=1) if values else None
                  for name, values in parts.items()}
        layers.append(LayerAttention(
            f"block {number}", *sums, pooled=joined["pooled"], cell=cell, band=joined["band"],
            global_row=global_row, global_column=joined["column"]))
        x = block(x, padding_mask=padding_mask, training=False)
    return layers


def _band(weights, start, window, cell):
    """`(H, n, T)` weights of queries `start:start + n` -> `(H, n / cell,
    2 * window - 1)`: each query's weights on the keys `-window + 1 ..
    window - 1` away (zero past either end), averaged over each cell's
    queries."""
    heads, queries, keys = weights.shape
    offsets = np.arange(-window + 1, window)
    positions = start + np.arange(queries)[:, None] + offsets[None]
    inside = (positions >= 0) & (positions < keys)
    band = np.take_along_axis(
        weights, np.broadcast_to(np.clip(positions, 0, keys - 1), (heads, *positions.shape)),
        axis=2) * inside
    cells = -(-queries // cell)
    padded = np.zeros((heads, cells * cell, band.shape[2]), np.float32)
    padded[:, :queries] = band
    counts = np.minimum(cell, queries - np.arange(cells) * cell)
    return padded.reshape(heads, cells, cell, -1).sum(axis=2) / counts[None, :, None]
