"""Evaluation reports and figures for the zoo's models."""

import dataclasses

import numpy as np


def classification_report(true_ids, predicted_ids, label_names):
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix.

    Returns a dict; `format_report` renders it as text.
    """
    true_ids = np.asarray(true_ids)
    predicted_ids = np.asarray(predicted_ids)
    classes = len(label_names)
    confusion = np.zeros((classes, classes), dtype=int)
    np.add.at(confusion, (true_ids, predicted_ids), 1)
    per_class = []
    for index, name in enumerate(label_names):
        true_positive = confusion[index, index]
        predicted = confusion[:, index].sum()
        actual = confusion[index].sum()
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"label": name, "precision": float(precision),
                          "recall": float(recall), "f1": float(f1), "support": int(actual)})
    return {
        "accuracy": float((true_ids == predicted_ids).mean()) if len(true_ids) else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": list(label_names),
    }


def format_report(report):
    width = max(8, *(len(c["label"]) for c in report["per_class"]))
    lines = [f"accuracy: {report['accuracy']:.4f}", "",
             f"{'label':<{width}}  precision  recall     f1  support"]
    for row in report["per_class"]:
        lines.append(f"{row['label']:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
                     f"{row['f1']:5.3f}  {row['support']:7d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * (width + 2) + "  ".join(f"{name[:8]:>8}" for name in report["labels"])]
    for name, row in zip(report["labels"], report["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{count:8d}" for count in row))
    return "\n".join(lines)


def corpus_bleu(references, hypotheses):
    """Corpus BLEU (4-gram, keras-hub's `Bleu`, its default 13a-style
    tokenization), one reference per hypothesis, in [0, 1]."""
    import keras_hub

    import warnings

    metric = keras_hub.metrics.Bleu(max_order=4)
    with warnings.catch_warnings():
        # All-empty hypotheses divide by a zero length inside keras-hub; the
        # brevity penalty is then 0, and so is BLEU, which is right.
        warnings.simplefilter("ignore", RuntimeWarning)
        metric.update_state([[str(r)] for r in references], [str(h) for h in hypotheses])
        return float(metric.result())


def translation_report(sources, references, translations_by_beam, examples=5):
    """BLEU for each beam size and a few example translations.

    Args:
        translations_by_beam: `{beam_size: translations}`.
    """
    beams = sorted(translations_by_beam)
    return {
        "bleu": {str(k): corpus_bleu(references, translations_by_beam[k]) for k in beams},
        "examples": [
            {"source": str(sources[i]), "reference": str(references[i]),
             **{f"beam_{k}": translations_by_beam[k][i] for k in beams}}
            for i in range(min(examples, len(sources)))
        ],
    }


@dataclasses.dataclass(frozen=True)
class Score:
    """The number a trained model is judged by, and where it was measured.

    Attributes:
        metric: `"accuracy"`, `"bleu_beam_4"`, ...
        value: its value (BLEU as a fraction, printed on its 0-100 scale).
        split: the data it was measured on (`"test"`, `"validation"`), or
            None.
    """

    metric: str
    value: float
    split: str = None

    @property
    def key(self):
        """The metadata and report key: `"test_accuracy"`."""
        return f"{self.split}_{self.metric}" if self.split else self.metric

    def as_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        where = f"{self.split} " if self.split else ""
        return f"{where}{self.metric}: {format_score(self.metric, self.value)}"


def format_score(name, value):
    """A headline score as printed: BLEU on its usual 0-100 scale (it is
    stored as 0-1), accuracy as a fraction."""
    return f"{100 * value:.2f}" if name.startswith("bleu") else f"{value:.4f}"


def format_translation_report(report):
    lines = [f"BLEU (beam {k}): {format_score('bleu', v)}" for k, v in report["bleu"].items()]
    for example in report["examples"]:
        lines += ["", f"  source:    {example['source']}",
                  f"  reference: {example['reference']}"]
        lines += [f"  {key.replace('_', ' ') + ':':<11}{value}"
                  for key, value in example.items() if key.startswith("beam_")]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Fewer epochs than this draw the training metrics after every step: one or
# two points per line teach nothing. Keras reports metrics once per
# `steps_per_execution` steps, so a short run may still have too few points
# (at least `STEP_CURVES_MIN_POINTS`) for a curve.
STEP_CURVES_BELOW_EPOCHS = 4
STEP_CURVES_MIN_POINTS = 4
METRIC_AXES = {"loss": "cross-entropy loss", "accuracy": "accuracy (share right)"}


def plot_history(history, path, step_history=None):
    """Loss and accuracy, training and validation, as a PNG: per epoch, or,
    for a run of fewer than `STEP_CURVES_BELOW_EPOCHS` epochs with
    `step_history` (`zoo.training.StepHistory.as_dict()`), the training
    metrics after each step with validation at each epoch's end.

    Keras reports a step's training metrics as the mean over the epoch so
    far, so the per-step lines are those means (they start afresh each
    epoch)."""
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator

    epochs = len(history.get("loss", []))
    steps = (step_history or {}).get("metrics", {})
    per_step = (epochs < STEP_CURVES_BELOW_EPOCHS
                and len(steps.get("step", [])) >= STEP_CURVES_MIN_POINTS
                and len(step_history.get("epoch_ends", [])) >= epochs)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for axis, metric in zip(axes, METRIC_AXES):
        if per_step:
            if steps.get(metric):
                axis.plot(steps["step"], steps[metric], "-",
                          label="training (the epoch's mean so far)")
            for number, end in enumerate(step_history["epoch_ends"]):
                axis.axvline(end, color="0.6", linestyle=":", linewidth=1,
                             label="end of an epoch" if number == 0 else None)
            values = history.get("val_" + metric)
            if values:
                ends = step_history["epoch_ends"][-len(values):]
                axis.plot(ends, values, "o", color="C1", label="validation")
            axis.set_xlabel("training step")
        else:
            for prefix, style in (("", "-o"), ("val_", "--o")):
                values = history.get(prefix + metric)
                if values:
                    axis.plot(range(1, len(values) + 1), values, style,
                              label="validation" if prefix else "training")
            axis.set_xlabel("epoch")
            if epochs:
                axis.set_xlim(0.5, epochs + 0.5)
        # MaxNLocator(integer=True) still puts 0.6, 0.8, ... on a range
        # shorter than two.
        axis.xaxis.set_major_locator(_integer_ticks() if per_step or epochs > 10
                                     else FixedLocator(range(1, epochs + 1)))
        axis.set_ylabel(METRIC_AXES[metric])
        axis.set_title(metric)
        axis.grid(alpha=0.3)
    # One legend under both panels, where it hides no point.
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=len(handles))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


# A head is "one-hot" when its rows put this much weight on one key on
# average, "uniform" when its entropy is this close to log(keys).
ONE_HOT_WEIGHT = 0.9
UNIFORM_ENTROPY = 0.98


@dataclasses.dataclass
class LayerAttention:
    """One attention layer's weights, summarized in memory that does not
    grow with `T x T`: what the statistics and the figure read.

    Attributes:
        name: the layer's name in figures and logs.
        entropy, largest, rows: per head `(H,)`, the sums over the rows that
            say something (see `attention_statistics`) of the normalized
            entropy and of the largest weight, and how many rows.
        pooled: `(H, T_q / cell, T_k / cell)` weights of the first example,
            padding cut off, each cell the largest weight among the
            `cell x cell` positions it covers (`cell` 1: the weights).
        cell: positions per side of a cell of `pooled`.
        band: for a long sequence in a local window of half-width `w`, the
            first example's `(H, T_q / cell, 2w - 1)` weights on the keys
            `-w + 1 .. w - 1` positions away from each query, averaged over
            a cell's queries; else None.
        global_row, global_column: with global tokens, the first token's
            weights on every key and every query's weight on it, `(H, T)`
            of the first example; else None.
    """

    name: str
    entropy: np.ndarray
    largest: np.ndarray
    rows: np.ndarray
    pooled: np.ndarray
    cell: int = 1
    band: np.ndarray = None
    global_row: np.ndarray = None
    global_column: np.ndarray = None


def row_sums(weights, allowed, query_mask):
    """Per head `(entropy, largest, rows)`: the sums over the rows that may
    attend at least two keys, among the real queries, of the normalized
    entropy and of the largest weight, and their count (see
    `attention_statistics`).

    Args:
        weights: `(B, H, T_q, T_k)`, a few query rows of them or all.
        allowed: broadcastable to `weights`, True where a query may attend.
        query_mask: `(B, T_q)`, True on real queries.
    """
    weights = np.asarray(weights, np.float64)
    allowed = np.broadcast_to(np.asarray(allowed, bool), weights.shape)
    positive = allowed & (weights > 0)
    entropy = -np.where(positive, weights * np.log(np.where(positive, weights, 1.0)), 0).sum(-1)
    visible = allowed.sum(-1)
    rows = np.asarray(query_mask, bool)[:, None, :] & (visible >= 2)
    normalized = entropy / np.log(np.maximum(visible, 2))
    return (np.where(rows, normalized, 0).sum((0, 2)),
            np.where(rows, weights.max(-1), 0).sum((0, 2)), rows.sum((0, 2)))


def max_pool(weights, cell):
    """`(H, T_q, T_k)` -> `(H, ceil(T_q / cell), ceil(T_k / cell))`: each
    cell's largest weight (zeros fill the last cells)."""
    if cell == 1:
        return np.asarray(weights, np.float32)
    heads, queries, keys = np.shape(weights)
    padded = np.zeros((heads, -(-queries // cell) * cell, -(-keys // cell) * cell), np.float32)
    padded[:, :queries, :keys] = weights
    return padded.reshape(heads, padded.shape[1] // cell, cell, -1, cell).max(axis=(2, 4))


def summarize_maps(maps):
    """`attention_maps`' output (whole weights) as `LayerAttention`s."""
    layers = []
    for name, weights, allowed, query_mask in maps:
        weights = np.asarray(weights)
        first = np.broadcast_to(np.asarray(allowed, bool), weights.shape)[0]
        queries, keys = np.asarray(query_mask, bool)[0], first.any(axis=(0, 1))
        layers.append(LayerAttention(name, *row_sums(weights, allowed, query_mask),
                                     pooled=weights[0][:, queries][:, :, keys]))
    return layers


def attention_statistics(maps):
    """Per layer and head: normalized entropy, mean largest weight and
    whether the head has collapsed.

    Args:
        maps: `[(layer name, weights (B, H, T_q, T_k), allowed, query mask)]`:
            `allowed` (broadcastable to the weights) is True where a query may
            attend a key (padding and causal masks), the query mask `(B, T_q)`
            True on real queries; or `LayerAttention`s (which a long
            sequence's weights are read into a few rows at a time).

    Returns:
        `{"layers": {name: [{"entropy", "max_weight", "state"} per head]},
        "mean_entropy", "collapsed_share", "one_hot", "uniform", "heads"}`.
        A row's entropy is divided by log(the keys it may attend), so 1 is
        uniform and 0 one-hot; rows that may attend fewer than two keys say
        nothing and are left out. A head is `"one-hot"` when its mean
        largest weight is at least 0.9, `"uniform"` when its normalized
        entropy is at least 0.98, else `"attends"`.
    """
    if maps and not isinstance(maps[0], LayerAttention):
        maps = summarize_maps(maps)
    layers, states = {}, []
    for layer in maps:
        heads = []
        for entropy, largest, rows in zip(layer.entropy, layer.largest, layer.rows):
            if not rows:
                continue
            head_entropy, head_max = float(entropy / rows), float(largest / rows)
            state = ("one-hot" if head_max >= ONE_HOT_WEIGHT else
                     "uniform" if head_entropy >= UNIFORM_ENTROPY else "attends")
            heads.append({"entropy": head_entropy, "max_weight": head_max, "state": state})
            states.append(state)
        layers[layer.name] = heads
    entropies = [h["entropy"] for heads in layers.values() for h in heads]
    return {
        "layers": layers,
        "heads": len(states),
        "mean_entropy": float(np.mean(entropies)) if entropies else float("nan"),
        "one_hot": states.count("one-hot"),
        "uniform": states.count("uniform"),
        "collapsed_share": (states.count("one-hot") + states.count("uniform")) / max(1, len(states)),
    }


def format_attention_statistics(statistics):
    return (f"attention: mean normalized entropy {statistics['mean_entropy']:.3f}; "
            f"collapsed heads {statistics['one_hot'] + statistics['uniform']}/"
            f"{statistics['heads']} ({statistics['one_hot']} one-hot, "
            f"{statistics['uniform']} uniform)")


def plot_attention_heads(layers, path, key_tokens=None, query_tokens=None,
                         title="attention weights"):
    """Every head of every layer for one example, as a grid PNG: a row per
    layer, a column per head, each on a colour scale from zero to its own
    largest weight, titled with its normalized entropy and state, so a flat
    head looks flat. Rows of a panel are the queries (the tokens attending),
    its columns the keys (the tokens attended to), as the figure's axis
    labels say once. A long sequence's panels show each cell's largest
    weight (`LayerAttention.pooled`): the band of a local window and a
    global token's row and column stay visible, and no panel is `T x T`.
    The tokens label the first head's panel of each row, on both axes; the
    row's other heads share those axes. Labelling every panel drew the same
    words once per head: MiniLM's 6 x 12 grid took most of a short
    fine-tuning run's time.

    Args:
        layers: `LayerAttention`s of one example.
        key_tokens, query_tokens: axis labels (per layer: a list of lists, or
            one list for all); None for none (image patches).
    """
    plt = _pyplot()
    statistics = attention_statistics(layers)["layers"]
    cell = max(layer.cell for layer in layers)
    columns = max(layer.pooled.shape[0] for layer in layers)
    longest = max(max(layer.pooled.shape[1:]) for layer in layers)
    labelled = longest <= 40 and key_tokens is not None
    side = min(4.0, max(1.8, 0.1 * longest + 0.8))
    # A row is as tall as its queries need (a decoder's few, an encoder's
    # many), plus room for the titles and rotated key labels under it.
    label_room = 0.09 * max((len(t) for row in range(len(layers))
                             for t in (_layer_tokens(key_tokens, row) or [""])), default=0)
    heights = [side * max(layer.pooled.shape[1], 3) / longest + 0.5
               + (label_room if labelled else 0) for layer in layers]
    figure = plt.figure(figsize=(side * columns + 1.6, sum(heights) + 1.2), layout="constrained")
    axes = figure.subplots(len(layers), columns, squeeze=False,
                           gridspec_kw={"height_ratios": heights})
    for row, layer in enumerate(layers):
        name, weights = layer.name, layer.pooled
        keys = _layer_tokens(key_tokens, row)
        queries = _layer_tokens(query_tokens if query_tokens is not None else key_tokens, row)
        for head in range(columns):
            axis = axes[row, head]
            if head >= weights.shape[0]:
                axis.axis("off")
                continue
            image = axis.imshow(weights[head], cmap="viridis", vmin=0.0, aspect="auto",
                                vmax=max(float(weights[head].max()), 1e-9))
            stats = statistics[name][head] if head < len(statistics.get(name, [])) else None
            label = f"head {head + 1}: max {float(weights[head].max()):.2f}"
            if stats:
                label += f"\nentropy {stats['entropy']:.2f} ({stats['state']})"
            axis.set_title(label, fontsize=7)
            if keys is not None and labelled and head == 0:
                axis.set_xticks(range(len(keys)), keys, rotation=90, fontsize=6)
            else:
                axis.set_xticks([])
            if queries is not None and labelled and head == 0:
                axis.set_yticks(range(len(queries)), queries, fontsize=6)
            else:
                axis.set_yticks([])
            if head == 0:
                axis.set_ylabel(name, fontsize=9, fontweight="bold")
    figure.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, ticks=[0, image.norm.vmax],
                    format=lambda value, _: "0" if value == 0 else "max")
    cells = f" ({cell} per pixel: its largest weight)" if cell > 1 else ""
    figure.supxlabel(("keys: the tokens attended to" if key_tokens is not None
                      else "keys: the positions attended to") + cells, fontsize=10)
    figure.supylabel(("queries: the tokens attending" if key_tokens is not None
                      else "queries: the positions attending") + cells, fontsize=10)
    figure.suptitle(f"{title}\nentropy: 1 = uniform over the keys, 0 = one key; each panel's "
                    "colours run from 0 (dark) to its own largest weight (bright)", fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_long_attention(layers, path, title="attention weights"):
    """A long sequence's attention in a local window, one row per layer:
    the band (the weights by offset from each query, averaged over the
    heads and over each cell's queries) and, with global tokens, the first
    token's row (its weights on every position) and column (every
    position's weight on it), a line per head. The heads' entropies and
    states are in the panel titles. Nothing drawn is `T x T`.

    Args:
        layers: `LayerAttention`s of one example, with `band` set.
    """
    plt = _pyplot()
    statistics = attention_statistics(layers)["layers"]
    with_global = any(layer.global_row is not None for layer in layers)
    columns = 3 if with_global else 1
    figure = plt.figure(figsize=(5.0 * columns + 1.0, 2.6 * len(layers) + 1.2),
                        layout="constrained")
    axes = figure.subplots(len(layers), columns, squeeze=False)
    for row, layer in enumerate(layers):
        band = layer.band.mean(axis=0)
        reach = (band.shape[1] - 1) // 2
        queries = band.shape[0] * layer.cell
        image = axes[row, 0].imshow(band, cmap="viridis", vmin=0.0, aspect="auto",
                                    extent=(-reach - 0.5, reach + 0.5, queries, 0),
                                    interpolation="nearest")
        states = [h["state"] for h in statistics.get(layer.name, [])]
        entropies = [h["entropy"] for h in statistics.get(layer.name, [])]
        axes[row, 0].set_title(
            f"{layer.name}: band, mean of {len(layer.band)} heads (max {band.max():.2f}); "
            f"entropy {np.mean(entropies):.2f}, {states.count('attends')} attend, "
            f"{len(states) - states.count('attends')} collapsed", fontsize=8)
        axes[row, 0].set_ylabel("query position", fontsize=8)
        figure.colorbar(image, ax=axes[row, 0], fraction=0.04)
        if with_global:
            for axis, values, what in ((axes[row, 1], layer.global_row,
                                        "the first token's weight on each key"),
                                       (axes[row, 2], layer.global_column,
                                        "each query's weight on the first token")):
                for head in values:
                    axis.plot(head, linewidth=0.6, alpha=0.7)
                axis.set_title(f"{layer.name}: {what} (a line per head)", fontsize=8)
                axis.set_xlim(0, values.shape[1] - 1)
                axis.set_ylim(bottom=0)
        if row == len(layers) - 1:
            axes[row, 0].set_xlabel("key offset from the query", fontsize=8)
            if with_global:
                axes[row, 1].set_xlabel("key position", fontsize=8)
                axes[row, 2].set_xlabel("query position", fontsize=8)
    figure.suptitle(f"{title}\nthe band of the local window and the global token, per layer "
                    "(a long sequence: its T x T weights are not drawn)", fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _layer_tokens(tokens, row):
    if tokens is None or not tokens:
        return None
    return tokens[row] if isinstance(tokens[0], (list, tuple)) else tokens


def _show_image(axis, image):
    gray = image.shape[-1] == 1
    axis.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, vmin=0, vmax=1)
    axis.set_xticks([])
    axis.set_yticks([])


def _overlay(axis, image, heat, vmax):
    """`heat` (h, w) over `image` (H, W, C) in [0, 1], on a scale from zero."""
    _show_image(axis, image)
    height, width = image.shape[:2]
    return axis.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=vmax,
                       extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")


def plot_attention_over_images(images, maps, titles, path, title="where each head looks"):
    """Per image (a row), the image with its title, then one heat map per
    head over it, as a PNG. Every panel shares one colour scale from zero,
    so a head spread evenly over the image looks evenly dim.

    Args:
        images: `(N, H, W, C)` in [0, 1].
        maps: `(N, heads, h, w)`: each head's share of attention per patch.
        titles: one per image (e.g. its true and predicted labels).
    """
    plt = _pyplot()
    images, maps = np.asarray(images), np.asarray(maps)
    count, heads = maps.shape[:2]
    figure = plt.figure(figsize=(1.6 * (heads + 1) + 1.2, 1.75 * count + 1.0),
                        layout="constrained")
    axes = figure.subplots(count, heads + 1, squeeze=False)
    vmax = float(np.quantile(maps, 0.999))
    for row in range(count):
        _show_image(axes[row, 0], images[row])
        axes[row, 0].set_ylabel(titles[row], fontsize=8)
        for head in range(heads):
            axis = axes[row, head + 1]
            overlay = _overlay(axis, images[row], maps[row, head], vmax)
            axis.set_xlabel(f"max {maps[row, head].max():.2f}", fontsize=7, labelpad=1)
    axes[0, 0].set_title("image", fontsize=9)
    for head in range(heads):
        axes[0, head + 1].set_title(f"head {head + 1}", fontsize=9)
    figure.colorbar(overlay, ax=axes.ravel().tolist(), fraction=0.03,
                    label="share of the head's attention per patch")
    figure.suptitle(f"{title}\n(uniform attention would give each patch "
                    f"{1 / np.prod(maps.shape[2:]):.3f})", fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_attention_rollout(images, maps, titles, path, title="attention rollout"):
    """Images `(N, H, W, C)` in [0, 1] in the top row, titled `titles`, each
    above its rollout map `(N, h, w)` upsampled over it, as a PNG. The colour
    scale starts at zero, so a flat map looks flat."""
    plt = _pyplot()
    images, maps = np.asarray(images), np.asarray(maps)
    count = len(images)
    figure = plt.figure(figsize=(1.9 * count + 1.2, 4.6), layout="constrained")
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        _show_image(axes[0, column], images[column])
        axes[0, column].set_title(titles[column], fontsize=8)
        overlay = _overlay(axes[1, column], images[column], maps[column], float(maps.max()))
        axes[1, column].set_title(f"rollout, max {maps[column].max():.2f}", fontsize=8)
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("where the prediction\nreads from", fontsize=9)
    figure.colorbar(overlay, ax=axes[1, :].tolist(), fraction=0.03, label="share of attention")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
