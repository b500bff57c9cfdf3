"""The figures a training run writes: every model's attention figures and the
training curves, drawn for real, checked for size and for the words that
tell a reader what the axes are."""

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_TRANSLATOR, TINY_VIT, number_pairs
from zoo import report
from zoo.resume import StepHistory


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved while the test runs: `{file name: {"texts",
    "x_labels", "y_labels", "x_ticks"}}`, read off the real figure as
    matplotlib saves it."""
    import matplotlib.figure
    import matplotlib.text

    figures = {}
    save = matplotlib.figure.Figure.savefig

    def recording_savefig(figure, path, *args, **kwargs):
        axes = [axis for axis in figure.axes if axis.get_visible() and axis.axison]
        figures[str(path).rsplit("/", 1)[-1]] = {
            "texts": [t.get_text() for t in figure.findobj(matplotlib.text.Text) if t.get_text()],
            "x_labels": [axis.get_xlabel() for axis in axes],
            "y_labels": [axis.get_ylabel() for axis in axes],
            "x_ticks": [list(axis.get_xticks()) for axis in axes],
        }
        return save(figure, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    return figures


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_attention_grids_name_queries_and_keys_once_and_stay_readable(
        tiny_classifier, drawn, tmp_path):
    from zoo import Translator

    import keras

    keras.utils.set_random_seed(0)
    translator = Translator(**TINY_TRANSLATOR)
    sources, targets = number_pairs(64, seed=1)
    translator.adapt(sources, targets)
    maps = translator.attention_maps(sources[:4], targets[:4])
    assert [name for name, *_ in maps] == ["encoder 1", "decoder 1 cross", "decoder 2 cross"]
    for name, weights, allowed, query_mask in maps:
        rows = weights.sum(-1)[np.broadcast_to(query_mask[:, None, :], rows_shape := weights.shape[:3])]
        np.testing.assert_allclose(rows, 1.0, atol=1e-5)
        assert rows_shape[1] == 2

    for model, inputs in ((tiny_classifier, ["a wonderful film", "dull"]),
                          (translator, sources[:3])):
        layers = len(model.attention_maps(*model.attention_sample(inputs)))
        path = tmp_path / f"{type(model).__name__}.png"
        assert model.save_attention_figure(inputs, path) == [path]
        figure = drawn[path.name]
        # Axis names once for the figure, not on every panel; a row per layer.
        assert figure["texts"].count("queries: the tokens attending") == 1
        assert figure["texts"].count("keys: the tokens attended to") == 1
        assert len([label for label in figure["y_labels"] if label]) == layers
        assert sum(text.startswith("head 1:") for text in figure["texts"]) == layers
        width, height = png_size(path)
        assert 300 < width <= 2000 and 300 < height <= 2000, (width, height)


def test_image_figures_show_each_head_over_the_image_with_true_and_predicted_labels(
        tiny_image_classifier, digits_sample, drawn, tmp_path):
    (images, labels), _ = digits_sample
    path = tmp_path / "attention.png"
    written = tiny_image_classifier.save_attention_figure(images[:6], path, labels=labels[:6])
    assert written == [path, tmp_path / "attention_rollout.png"]  # no matrices unless asked

    heads = tiny_image_classifier.backbone.num_heads
    figure = drawn["attention.png"]
    assert [f"head {h}" for h in range(1, heads + 1)] == \
        [t for t in figure["texts"] if t.startswith("head ")]
    titles = [label for label in figure["y_labels"] if label.startswith("true ")]
    predicted, probabilities = tiny_image_classifier.predict_labels(images[:6])
    assert titles == [f"true {true}\npredicted {name} ({p.max():.2f})"
                      for true, name, p in zip(labels[:6], predicted, probabilities)]
    assert "share of the head's attention per patch" in figure["texts"]
    width, height = png_size(path)
    assert width <= 1000 and height <= 1400, (width, height)  # was 2500 x 3680

    rollout = drawn["attention_rollout.png"]
    assert all(f"true {true}" in " ".join(rollout["texts"]) for true in labels[:6])
    assert sum(text.startswith("rollout, max") for text in rollout["texts"]) == 6
    assert {"image", "where the prediction\nreads from"} <= set(rollout["y_labels"])

    written = tiny_image_classifier.save_attention_figure(images[:2], path, matrices=True)
    assert written[-1] == tmp_path / "attention_matrices.png"
    assert drawn["attention_matrices.png"]["texts"].count("keys: the positions attended to") == 1


@pytest.mark.parametrize("pooling", ["gap", "token"])
def test_head_maps_are_the_last_blocks_attention_over_the_patches(pooling, digits_sample):
    from zoo import ImageClassifier

    (images, _), _ = digits_sample
    model = ImageClassifier(num_classes=2, **{**TINY_VIT, "pooling": pooling})
    maps = model.head_attention(images[:3])
    grid = model.grid_shape
    assert maps.shape == (3, TINY_VIT["num_heads"], *grid)
    weights = np.asarray(model.attention_maps(images[:3])[-1][1], np.float64)
    if pooling == "token":  # the class token's row, without its weight on itself
        expected = weights[:, :, 0, 1:]
    else:
        expected = weights.mean(axis=2)
    np.testing.assert_allclose(maps.reshape(expected.shape), expected, atol=1e-6)
    sums = maps.reshape(3, TINY_VIT["num_heads"], -1).sum(-1)
    if pooling == "gap":
        np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    else:
        assert np.all(sums < 1.0) and np.all(sums > 0.0)


def test_training_curves_have_named_axes_and_integer_epochs(drawn, tmp_path):
    one_epoch = {"loss": [0.65], "accuracy": [0.62], "val_loss": [0.58], "val_accuracy": [0.70]}
    report.plot_history(one_epoch, tmp_path / "one.png")
    figure = drawn["one.png"]
    assert figure["x_labels"] == ["epoch", "epoch"]
    assert figure["y_labels"] == ["cross-entropy loss", "accuracy (share right)"]
    assert figure["x_ticks"] == [[1], [1]]  # not 0.945 ... 1.050

    steps = StepHistory()
    rng = np.random.default_rng(0)
    for step in range(1, 14):
        steps.record(step, {"loss": 0.7 - 0.01 * step + 0.01 * rng.random(), "accuracy": 0.5})
    steps.end_epoch(13)
    report.plot_history(one_epoch, tmp_path / "steps.png", steps.as_dict())
    figure = drawn["steps.png"]
    assert figure["x_labels"] == ["training step", "training step"]
    assert figure["y_labels"] == ["cross-entropy loss", "accuracy (share right)"]
    assert {"validation", "end of an epoch"} <= set(figure["texts"])

    many = {name: list(np.linspace(1, 0.5, 6)) for name in one_epoch}
    report.plot_history(many, tmp_path / "many.png", steps.as_dict())
    figure = drawn["many.png"]
    assert figure["x_labels"] == ["epoch", "epoch"] and figure["x_ticks"][0] == [1, 2, 3, 4, 5, 6]
    assert png_size(tmp_path / "many.png") == (1200, 480)


def test_the_step_record_stays_bounded_and_survives_a_resume():
    steps = StepHistory(max_points=100)
    for step in range(1, 10_001):
        steps.record(step, {"loss": 1.0 / step, "val_loss": 3.0})
    saved = steps.as_dict()
    assert len(saved["metrics"]["step"]) <= 100 and "val_loss" not in saved["metrics"]
    assert saved["metrics"]["step"][-1] > 9_800  # the whole run, thinned, not its start
    assert np.all(np.diff(saved["metrics"]["step"]) > 0)
    np.testing.assert_allclose(saved["metrics"]["loss"], 1.0 / np.array(saved["metrics"]["step"]))
    resumed = StepHistory(saved, max_points=100)
    next_step = (10_000 // resumed.stride + 1) * resumed.stride  # the next one it keeps
    resumed.record(next_step, {"loss": 0.0})
    assert resumed.metrics["step"][-1] == next_step and resumed.stride == steps.stride
