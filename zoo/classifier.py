"""What every zoo classifier shares: label names, presets, the served outputs.

`ClassifierModel` sits between `RawInputModel` (raw inputs through `tf.data`)
and the concrete tasks (`TextClassifier`, `ImageClassifier`), each a
backbone, a preprocessor and a head. A subclass sets `kind` (the preset
kind) and `presets_dir`, builds its network in `__init__` with
`self.backbone`, `self.preprocessor` and a final `Dense` named
`classifier_head`, and extends `get_config()`; for `from_preset` it
declares the bodies it takes (`body_loaders`, keyed by what a source holds)
and how a fresh head goes on one (`from_body`); it may add preset assets
(a vocabulary) through `preset_assets()` / `assets_from_preset()`.
"""

import functools
import json

import keras
import numpy as np
import tensorflow as tf

from zoo import report as reports
from zoo.keras_compat import set_untracked
from zoo.pipeline import RawInputModel
from zoo.preset_model import PresetModel
from zoo.presets import load_preset, preset_config

LABELS_FILE = "labels.json"
HEAD_NAME = "classifier_head"
# What a fine-tuned copy of a classifier preset takes from the body and the
# classes rather than from the task's own settings.
BODY_AND_CLASSES = ("backbone", "preprocessor", "num_classes")


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


class ClassifierModel(PresetModel, RawInputModel):
    """Base of the zoo's classifiers (see the module docstring)."""

    adjustable = ("dropout", "num_classes")

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

    def default_loss(self):
        """Cross-entropy over the classes' logits."""
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def predict_labels(self, inputs, batch_size=32):
        """`(names, probabilities)` for raw `inputs`."""
        probabilities = keras.ops.convert_to_numpy(
            keras.ops.softmax(self.predict(inputs, batch_size=batch_size, verbose=0))
        )
        names = self.display_labels()
        return [names[i] for i in probabilities.argmax(-1)], probabilities

    # Reports (the training job, `python -m zoo evaluate|predict`).

    def evaluation_report(self, inputs, labels, batch_size=32):
        """Accuracy, per-class P/R/F1 and the confusion matrix; `"score"`
        is the number the model is judged by (`zoo.report.Score`'s fields)."""
        predicted, _ = self.predict_labels(inputs, batch_size=batch_size)
        summary = reports.classification_report(
            self.label_ids(labels), self.label_ids(predicted), self.display_labels()
        )
        return {**summary, "score": {"metric": "accuracy", "value": summary["accuracy"]}}

    def format_evaluation(self, summary):
        return reports.format_report(summary)

    def prediction_lines(self, inputs):
        """`label<TAB>probability<TAB>input` per input."""
        names, probabilities = self.predict_labels(inputs)
        return [f"{name}\t{p.max():.3f}\t{given}"
                for given, name, p in zip(inputs, names, probabilities)]

    # Configuration and presets.

    # The labels are a preset's file (`LABELS_FILE`), not its config.
    file_arguments = ("labels",)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "labels": self.label_names}

    def write_assets(self):
        return {LABELS_FILE: json.dumps(self.display_labels())}

    @classmethod
    def preset_labels(cls, loaded):
        return json.loads(loaded.asset_text(LABELS_FILE))

    # Presets and pretrained bodies: what a subclass provides (`body_loaders`,
    # `from_body`; zoo.preset_model says how a handle picks one).
    from_scratch_sizes = {}
    # Defaults of `from_preset` on a body (a backbone without a head).
    body_overrides = {}

    @classmethod
    def from_preset(cls, preset, sha256=None, **overrides):
        """Loads a classifier preset, or puts a fresh head on a pretrained body.

        Args:
            preset: a shipped classifier preset (`presets`) or body
                (`named_presets()`), a classifier preset folder, or a body
                (`body_loaders`): a zoo body preset, a keras-hub preset, a
                Hugging Face folder, `hf://` or `kaggle://`.
            sha256: pins a zoo preset folder (a classifier preset or a
                body): the SHA-256 its `metadata.json` must have.
            **overrides: `num_classes` or `labels` (required for a body; for
                a classifier preset, other classes give a fresh head), and
                any of `adjustable`; sizes that shape weights cannot
                change.
        """
        return super().from_preset(preset, sha256, **overrides)

    @classmethod
    def check_override_names(cls, overrides):
        unknown = set(overrides) - set(cls.adjustable) - {"labels"}
        if unknown:
            shaping = sorted(unknown & set(cls.from_scratch_sizes))
            if shaping:
                raise ValueError(
                    f"Cannot change {shaping} of a pretrained network: they shape its "
                    f"weights. Only {list(cls.adjustable)} may be given.")
            raise ValueError(f"Unknown arguments {sorted(unknown)}; only "
                             f"{list(cls.adjustable)} may be given.")

    @classmethod
    def _from_body_source(cls, load_body, source, num_classes=None, labels=None, **overrides):
        if labels is None and num_classes is None:
            raise ValueError(
                f"'{source.handle}' is a pretrained body without a classifier head: give the "
                "classes, e.g. `labels=['negative', 'positive']` or `num_classes=2`.")
        return cls.from_body(*cls.load_body_parts(load_body, source), num_classes=num_classes,
                             labels=labels, **{**cls.body_overrides, **overrides})

    @classmethod
    def from_body(cls, backbone, preprocessor, num_classes=None, labels=None, **overrides):
        """A classifier on `backbone` and `preprocessor`, `overrides` applied, a fresh head."""
        raise NotImplementedError

    @classmethod
    def _from_own_preset(cls, source, num_classes=None, labels=None, **overrides):
        loaded = load_preset(source.folder, cls.kind)
        if "backbone" not in loaded.config:
            raise ValueError(
                f"{loaded.folder} holds a {cls.kind} preset in the single-network layout of "
                "zoo versions before backbone + preprocessor + task (2026-11-30), which this "
                "version does not read: train it again, or keep the earlier version for it.")
        preset_labels = cls.preset_labels(loaded)
        pretrained = cls.with_preset_weights(
            loaded, **{**loaded.config, "labels": preset_labels}, **cls.assets_from_preset(loaded))
        wanted = len(labels) if labels is not None else (num_classes or pretrained.num_classes)
        same_head = wanted == pretrained.num_classes and (
            labels is None or [str(v) for v in labels] == preset_labels)
        if same_head and not overrides:
            return pretrained
        if same_head and labels is None:
            labels = preset_labels
        # The task's own settings (pooling, dropout, ...) carry over.
        settings = {k: v for k, v in preset_config(pretrained).items()
                    if k not in BODY_AND_CLASSES}
        model = cls.from_body(pretrained.backbone, pretrained.preprocessor,
                              num_classes=None if labels else wanted, labels=labels,
                              **{**settings, **overrides})
        if same_head:
            model.head.set_weights(pretrained.head.get_weights())
        return model


class ClassifierServing(tf.Module):
    """Base of what a classifier's SavedModel tracks: the network and labels.

    Subclasses add the `tf.function` signatures for their raw inputs and
    return `self.outputs(model_inputs)`.
    """

    def __init__(self, classifier):
        super().__init__()
        set_untracked(self, classifier=classifier)
        self.variables_ = list(classifier.variables)
        self.label_names = tf.constant(classifier.display_labels())
        # One `tf.function`: the signatures that reach the network with the
        # same input shapes share one trace of it (the export traced it once
        # per signature and per branch before, a third of its time). Wrapped,
        # so that `tf.saved_model.save` neither keeps it as an endpoint of its
        # own nor traces it again (`zoo.export.traced_signatures`).
        self.outputs = functools.partial(tf.function(self._outputs))

    def empty_outputs(self):
        """What `outputs` gives for a request of no inputs."""
        return {
            "probabilities": tf.zeros((0, self.label_names.shape[0]), tf.float32),
            "label": tf.zeros((0,), tf.string),
            "label_id": tf.zeros((0,), tf.int64),
        }

    def _outputs(self, model_inputs):
        logits = self.classifier(model_inputs, training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "label": tf.gather(self.label_names, label_id),
            "label_id": label_id,
        }
