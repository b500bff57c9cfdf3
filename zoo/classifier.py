"""What every zoo classifier shares: label names, presets, the served outputs.

`ClassifierModel` sits between `RawInputModel` (raw inputs through `tf.data`)
and the concrete models (`TextClassifier`, `ImageClassifier`). A subclass
sets `kind` (the preset kind) and `presets_dir`, builds its network in
`__init__` with a final `Dense` named `classifier_head`, and implements
`architecture()`; it may add preset assets (a vocabulary) through
`preset_assets()` / `assets_from_preset()`, and adapt pretrained weights to
a new configuration in `transfer_weights()`.
"""

import json

import keras
import numpy as np
import tensorflow as tf

from zoo import presets as preset_io
from zoo import report as reports
from zoo.pipeline import RawInputModel

LABELS_FILE = "labels.json"
HEAD_NAME = "classifier_head"


def check_classes(num_classes, labels):
    """`(num_classes, labels)` resolved and validated; labels may be None."""
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(set(labels)) != len(labels):
            raise ValueError(f"`labels` has duplicates. Received: labels={labels}")
        if num_classes is not None and num_classes != len(labels):
            raise ValueError(
                f"num_classes={num_classes} disagrees with the {len(labels)} labels {labels}."
            )
        num_classes = len(labels)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            "A classifier needs `num_classes` >= 2 (or two or more `labels`). "
            f"Received: num_classes={num_classes!r}, labels={labels!r}"
        )
    return num_classes, labels


class ClassifierModel(preset_io.PresetModel, RawInputModel):
    """Base of the zoo's classifiers (see the module docstring)."""

    adjustable_at_load = ("dropout", "num_classes")

    def __init__(self, num_classes=None, labels=None, **kwargs):
        num_classes, labels = check_classes(num_classes, labels)
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.label_names = labels

    # Labels.

    def display_labels(self):
        return list(self.label_names or [str(i) for i in range(self.num_classes)])

    def prepare_for_training(self, x, y):
        """Takes label names from string labels; refuses a single class."""
        if y is None or isinstance(x, tf.data.Dataset):
            return
        labels = np.asarray(y)
        if labels.dtype.kind in "OSU" and self.label_names is None:
            names = sorted({str(v) for v in labels.tolist()})
            if len(names) == 1:
                raise ValueError(
                    f"The training labels hold a single class ({names[0]!r}); a "
                    "classifier needs examples of at least two."
                )
            if len(names) != self.num_classes:
                raise ValueError(
                    f"The labels hold {len(names)} classes {names[:10]}, "
                    f"but the model has num_classes={self.num_classes}."
                )
            self.label_names = names
        distinct = np.unique(self.label_ids(y))
        if len(distinct) < 2:
            raise ValueError(
                "The training labels hold a single class "
                f"({self.display_labels()[int(distinct[0])]!r}); a classifier "
                "needs examples of at least two."
            )

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """`compile` with classifier defaults: AdamW, cross-entropy, accuracy."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.01)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics == "auto":
            metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def predict_labels(self, inputs, batch_size=32):
        """`(names, probabilities)` for raw `inputs`."""
        probabilities = keras.ops.convert_to_numpy(
            keras.ops.softmax(self.predict(inputs, batch_size=batch_size, verbose=0))
        )
        names = self.display_labels()
        return [names[i] for i in probabilities.argmax(-1)], probabilities

    # Reports (the training job, `python -m zoo evaluate|predict`).

    def evaluation_report(self, inputs, labels, batch_size=32):
        """Accuracy, per-class P/R/F1 and the confusion matrix; `"headline"`
        names the number the command line prints."""
        predicted, _ = self.predict_labels(inputs, batch_size=batch_size)
        summary = reports.classification_report(
            self.label_ids(labels), self.label_ids(predicted), self.display_labels()
        )
        return {**summary, "headline": "accuracy"}

    def format_evaluation(self, summary):
        return reports.format_report(summary)

    def prediction_lines(self, inputs):
        """`label<TAB>probability<TAB>input` per input."""
        names, probabilities = self.predict_labels(inputs)
        return [f"{name}\t{p.max():.3f}\t{given}"
                for given, name, p in zip(inputs, names, probabilities)]

    # Configuration and presets.

    def constructor_arguments(self):
        return {**super().constructor_arguments(), "labels": self.label_names}

    def get_config(self):
        return {**super().get_config(), **self.constructor_arguments()}

    def write_assets(self):
        return {LABELS_FILE: json.dumps(self.display_labels())}

    @classmethod
    def preset_labels(cls, loaded):
        return json.loads(loaded.asset(LABELS_FILE).read_text())

    @classmethod
    def from_preset(cls, preset, num_classes=None, labels=None, **overrides):
        """Loads a shipped preset by name, or a preset folder.

        A `num_classes` (or `labels`) different from the preset's keeps the
        pretrained body and gives a fresh head. `overrides` may change the
        entries in `adjustable_at_load`; sizes that shape weights cannot
        change.
        """
        loaded = cls.load_verified_preset(preset)
        preset_labels = cls.preset_labels(loaded)
        config = dict(loaded.config)
        assets = cls.assets_from_preset(loaded)
        cls.check_overrides(config, overrides)
        pretrained = cls.with_preset_weights(
            loaded, **{**config, "labels": preset_labels}, **assets
        )
        wanted = len(labels) if labels is not None else (num_classes or config["num_classes"])
        same_head = wanted == config["num_classes"] and (
            labels is None or [str(v) for v in labels] == preset_labels
        )
        if same_head and not overrides:
            return pretrained
        if labels is None and same_head:
            labels = preset_labels
        model = cls(**{**config, **overrides, "num_classes": None if labels else wanted,
                       "labels": labels}, **assets)
        model.transfer_weights(pretrained, same_head)
        return model

    def transfer_weights(self, pretrained, same_head):
        """Copies `pretrained`'s weights, layer by layer name, head included
        only when `same_head`."""
        sources = {layer.name: layer for layer in pretrained.layers}
        for layer in self.layers:
            if layer.name == HEAD_NAME and not same_head:
                continue
            if layer.name in sources:
                self.transfer_layer(sources[layer.name], layer)

    def transfer_layer(self, source, target):
        """Copies one pretrained layer's weights into this model's twin layer."""
        target.set_weights(source.get_weights())


class ClassifierServing(tf.Module):
    """Base of what a classifier's SavedModel tracks: the network and labels.

    Subclasses add the `tf.function` signatures for their raw inputs and
    return `self.outputs(model_inputs)`.
    """

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.variables_ = list(classifier.variables)
        self.label_names = tf.constant(classifier.display_labels())

    def outputs(self, model_inputs):
        logits = self.classifier(model_inputs, training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "label": tf.gather(self.label_names, label_id),
            "label_id": label_id,
        }
