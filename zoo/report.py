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


def attention_statistics(maps):
    """Per layer and head: normalized entropy, mean largest weight and
    whether the head has collapsed.

    Args:
        maps: `[(layer name, weights (B, H, T_q, T_k), allowed, query mask)]`:
            `allowed` (broadcastable to the weights) is True where a query may
            attend a key (padding and causal masks), the query mask `(B, T_q)`
            True on real queries.

    Returns:
        `{"layers": {name: [{"entropy", "max_weight", "state"} per head]},
        "mean_entropy", "collapsed_share", "one_hot", "uniform", "heads"}`.
        A row's entropy is divided by log(the keys it may attend), so 1 is
        uniform and 0 one-hot; rows that may attend fewer than two keys say
        nothing and are left out. A head is `"one-hot"` when its mean
        largest weight is at least 0.9, `"uniform"` when its normalized
        entropy is at least 0.98, else `"attends"`.
    """
    layers, states = {}, []
    for name, weights, allowed, query_mask in maps:
        weights = np.asarray(weights, np.float64)
        allowed = np.broadcast_to(np.asarray(allowed, bool), weights.shape)
        positive = allowed & (weights > 0)
        entropy = -np.where(positive, weights * np.log(np.where(positive, weights, 1.0)), 0).sum(-1)
        visible = allowed.sum(-1)
        rows = np.asarray(query_mask, bool)[:, None, :] & (visible >= 2)
        normalized = entropy / np.log(np.maximum(visible, 2))
        largest = weights.max(-1)
        heads = []
        for head in range(weights.shape[1]):
            chosen = rows[:, head]
            if not chosen.any():
                continue
            head_entropy = float(normalized[:, head][chosen].mean())
            head_max = float(largest[:, head][chosen].mean())
            state = ("one-hot" if head_max >= ONE_HOT_WEIGHT else
                     "uniform" if head_entropy >= UNIFORM_ENTROPY else "attends")
            heads.append({"entropy": head_entropy, "max_weight": head_max, "state": state})
            states.append(state)
        layers[name] = heads
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


def plot_attention_heads(maps, path, key_tokens=None, query_tokens=None,
                         title="attention weights"):
    """Every head of every layer for one example, as a grid PNG: a row per
    layer, a column per head, each on a colour scale from zero to its own
    largest weight, titled with its normalized entropy and state, so a flat
    head looks flat. Rows of a panel are the queries (the tokens attending),
    its columns the keys (the tokens attended to), as the figure's axis
    labels say once.

    Args:
        maps: `[(layer name, weights (H, T_q, T_k), allowed (1, T_q, T_k))]`
            of one example, padding already cut off; `allowed` as in
            `attention_statistics`.
        key_tokens, query_tokens: axis labels (per layer: a list of lists, or
            one list for all); None for none (image patches).
    """
    plt = _pyplot()
    statistics = attention_statistics([
        (name, weights[None], allowed[None], np.ones((1, np.shape(weights)[1]), bool))
        for name, weights, allowed in maps
    ])["layers"]
    columns = max(np.shape(w)[0] for _, w, _ in maps)
    longest = max(max(np.shape(w)[1:]) for _, w, _ in maps)
    labelled = longest <= 40 and key_tokens is not None
    side = min(4.0, max(1.8, 0.1 * longest + 0.8))
    # A row is as tall as its queries need (a decoder's few, an encoder's
    # many), plus room for the titles and rotated key labels under it.
    label_room = 0.09 * max((len(t) for row in range(len(maps))
                             for t in (_layer_tokens(key_tokens, row) or [""])), default=0)
    heights = [side * max(np.shape(w)[1], 3) / longest + 0.5 + (label_room if labelled else 0)
               for _, w, _ in maps]
    figure = plt.figure(figsize=(side * columns + 1.6, sum(heights) + 1.2), layout="constrained")
    axes = figure.subplots(len(maps), columns, squeeze=False,
                           gridspec_kw={"height_ratios": heights})
    for row, (name, weights, _) in enumerate(maps):
        weights = np.asarray(weights)
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
            if keys is not None and labelled:
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
    figure.supxlabel("keys: the tokens attended to" if key_tokens is not None
                     else "keys: the positions attended to", fontsize=10)
    figure.supylabel("queries: the tokens attending" if key_tokens is not None
                     else "queries: the positions attending", fontsize=10)
    figure.suptitle(f"{title}\nentropy: 1 = uniform over the keys, 0 = one key; each panel's "
                    "colours run from 0 (dark) to its own largest weight (bright)", fontsize=10)
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
