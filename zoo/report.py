"""Evaluation reports and figures for the zoo's models."""

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


def format_translation_report(report):
    lines = [f"BLEU (beam {k}): {100 * v:.2f}" for k, v in report["bleu"].items()]
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


def plot_history(history, path):
    """Loss and accuracy per epoch, training and validation, as a PNG."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-o"), ("val_", "--o")):
            values = history.get(prefix + metric)
            if values:
                axis.plot(range(1, len(values) + 1), values, style,
                          label=("validation " if prefix else "training ") + metric)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(_integer_ticks())
        axis.set_title(metric)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def plot_attention(tokens, weights, path, title="attention weights", query_tokens=None):
    """Heatmap of `(heads, T_q, T_k)` weights, averaged over heads, as a PNG.
    `tokens` label the keys, and the queries too unless `query_tokens` is given
    (cross-attention)."""
    plt = _pyplot()
    query_tokens = tokens if query_tokens is None else query_tokens
    mean = np.asarray(weights).mean(0)
    width = max(4.0, 0.35 * len(tokens) + 2)
    height = max(4.0, 0.35 * len(query_tokens) + 2)
    figure, axis = plt.subplots(figsize=(width, height))
    image = axis.imshow(mean, cmap="viridis")
    axis.set_xticks(range(len(tokens)), tokens, rotation=90)
    axis.set_yticks(range(len(query_tokens)), query_tokens)
    axis.set_xlabel("key")
    axis.set_ylabel("query")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_attention_rollout(images, maps, titles, path, title="attention rollout"):
    """Images `(N, H, W, C)` in [0, 1], each beside its rollout map `(N, h, w)`
    upsampled over it, as a PNG. The colour scale starts at zero, so a flat
    map looks flat."""
    plt = _pyplot()
    images, maps = np.asarray(images), np.asarray(maps)
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.6), squeeze=False)
    for column in range(count):
        image = images[column]
        gray = image.shape[-1] == 1
        shown = image[..., 0] if gray else image
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(shown, cmap="gray" if gray else None, vmin=0, vmax=1)
        top.set_title(titles[column], fontsize=9)
        bottom.imshow(shown, cmap="gray" if gray else None, vmin=0, vmax=1)
        height, width = image.shape[:2]
        overlay = bottom.imshow(maps[column], cmap="inferno", alpha=0.6, vmin=0,
                                vmax=float(maps.max()), extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                                interpolation="nearest")
        for axis in (top, bottom):
            axis.set_xticks([])
            axis.set_yticks([])
    figure.colorbar(overlay, ax=axes[1, :].tolist(), fraction=0.02, label="share of attention")
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
