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
    head looks flat.

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
    rows, columns = len(maps), max(np.shape(w)[0] for _, w, _ in maps)
    longest = max(max(np.shape(w)[1:]) for _, w, _ in maps)
    side = min(6.0, max(2.6, 0.16 * longest + 1.2))
    figure, axes = plt.subplots(rows, columns, figsize=(side * columns + 1, side * rows + 0.8),
                                squeeze=False)
    for row, (name, weights, _) in enumerate(maps):
        weights = np.asarray(weights)
        for head in range(columns):
            axis = axes[row, head]
            if head >= weights.shape[0]:
                axis.axis("off")
                continue
            image = axis.imshow(weights[head], cmap="viridis", vmin=0.0,
                                vmax=max(float(weights[head].max()), 1e-9))
            stats = statistics[name][head] if head < len(statistics.get(name, [])) else None
            label = f"{name}, head {head + 1}\nmax {float(weights[head].max()):.3f}"
            if stats:
                label += f", entropy {stats['entropy']:.2f} ({stats['state']})"
            axis.set_title(label, fontsize=8)
            keys = _layer_tokens(key_tokens, row)
            queries = _layer_tokens(query_tokens if query_tokens is not None else key_tokens, row)
            small = longest <= 40
            if keys is not None and small:
                axis.set_xticks(range(len(keys)), keys, rotation=90, fontsize=6)
            else:
                axis.set_xticks([])
            if queries is not None and small and head == 0:
                axis.set_yticks(range(len(queries)), queries, fontsize=6)
            else:
                axis.set_yticks([])
    figure.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, ticks=[0, image.norm.vmax],
                    format=lambda value, _: "0" if value == 0 else "max")
    figure.suptitle(f"{title}\nentropy: 1 = uniform over the keys, 0 = one key; each panel's "
                    "colours run from 0 (dark) to its own largest weight (bright)", fontsize=9)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _layer_tokens(tokens, row):
    if tokens is None or not tokens:
        return None
    return tokens[row] if isinstance(tokens[0], (list, tuple)) else tokens


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
