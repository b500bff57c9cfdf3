"""Hostile and broken inputs: nothing is dropped silently, nothing costs
without bound, and the command line answers with one `error:` line."""

import io
import json
import struct

import numpy as np
import pytest

from zoo import data
from zoo.__main__ import main
from zoo.data import read_labelled_data, read_sentence_data


def rows(count, broken_at=None, broken="\"Truly the worst\tneg"):
    lines = ["text\tlabel"]
    for index in range(count):
        lines.append(broken if index == broken_at else f"review {index}\t{'pos' if index % 2 else 'neg'}")
    return "\n".join(lines) + "\n"


def train_cli(path, tmp_path, capsys, *flags):
    code = main(["train", "text-classifier", "--data", str(path), "--out",
                 str(tmp_path / "run"), "--from-scratch", *flags])
    return code, capsys.readouterr()


def test_an_unclosed_quote_in_a_tsv_is_text_and_every_row_is_read(tmp_path):
    (tmp_path / "reviews.tsv").write_text(rows(1000, broken_at=9))
    texts, labels, counts = read_labelled_data(tmp_path / "reviews.tsv")
    assert len(texts) == 1000 and counts.rows == counts.used == 1000 and not counts.skipped
    assert texts[9] == "\"Truly the worst" and labels[9] == "neg"
    assert texts[999] == "review 999"


def test_an_unclosed_quote_in_a_csv_is_refused_at_the_line_it_opens(tmp_path, capsys):
    lines = ["text,label"] + [f"review {i},pos" for i in range(1000)]
    lines[10] = "\"Truly the worst,neg"  # the tenth row, line 11 of the file
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"reviews.csv, line 11: a quoted field opens in the "
                                         r"record starting here and never closes"):
        read_labelled_data(tmp_path / "reviews.csv")
    code, output = train_cli(tmp_path / "reviews.csv", tmp_path, capsys)
    assert code == 2 and output.err.count("\n") == 1
    assert output.err.startswith("error: ") and "line 11" in output.err
    # A quoted field over several lines is CSV, and is read.
    (tmp_path / "multi.csv").write_text("text,label\n\"two\nlines\",pos\nplain,neg\n")
    texts, _, counts = read_labelled_data(tmp_path / "multi.csv")
    assert texts == ["two\nlines", "plain"] and counts.rows == 2


def test_a_long_field_is_cut_and_counted_and_an_oversized_one_refused(tmp_path, capsys):
    long_text = "word " * 40_000  # 200,000 characters, over the csv module's 128 KB
    (tmp_path / "long.csv").write_text(f"text,label\n{long_text},pos\nshort,neg\n")
    texts, _, counts = read_labelled_data(tmp_path / "long.csv")
    assert len(texts[0]) == data.MAX_TEXT_CHARACTERS and texts[1] == "short"
    assert counts.cut == 1 and "1 text(s) cut to 100000 characters" in counts.summary()
    # One line longer than any field may be: refused by line, not a traceback.
    (tmp_path / "huge.csv").write_text("text,label\nfine,pos\n" + "x" * (data.MAX_FIELD_CHARACTERS + 1)
                                       + ",neg\n")
    code, output = train_cli(tmp_path / "huge.csv", tmp_path, capsys)
    assert code == 2 and output.err.count("\n") == 1
    assert f"huge.csv, line 3: a field of more than {data.MAX_FIELD_CHARACTERS}" in output.err


def test_a_binary_file_is_refused_with_one_error_line(tmp_path, capsys):
    (tmp_path / "weights.csv").write_bytes(b"text,label\nfine,pos\n\x89PNG\x00\x00\x01\xff" * 3)
    code, output = train_cli(tmp_path / "weights.csv", tmp_path, capsys)
    assert code == 2 and output.err.count("\n") == 1
    assert "weights.csv, line 3: a NUL byte; expected a UTF-8 text file" in output.err
    (tmp_path / "pairs.tsv").write_bytes(b"a\tb\n" * 20 + b"\x00")
    with pytest.raises(ValueError, match="pairs.tsv, line 21: a NUL byte"):
        read_sentence_data(tmp_path / "pairs.tsv")


def test_a_huge_json_record_is_cut_at_read_time(tmp_path):
    records = [{"text": "z" * (20 << 20), "label": "pos"}, {"text": "fine", "label": "neg"}]
    (tmp_path / "big.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    texts, labels, counts = read_labelled_data(tmp_path / "big.jsonl")
    assert [len(t) for t in texts] == [data.MAX_TEXT_CHARACTERS, 4] and counts.cut == 1
    pairs = [{"source": "q" * 200_000, "target": "kurz"}] + [
        {"source": f"s{i}", "target": f"t{i}"} for i in range(10)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    sources, targets, counts = read_sentence_data(tmp_path / "pairs.jsonl")
    assert len(sources[0]) == data.MAX_TEXT_CHARACTERS and counts.cut == 1 and counts.rows == 11


def test_skipped_rows_past_the_share_stop_the_run_unless_allowed(tmp_path, capsys):
    text = rows(100).replace("review 5\tpos", "review 5\t").replace("review 7\tpos", "\tpos")
    (tmp_path / "gaps.tsv").write_text(text)
    code, output = train_cli(tmp_path / "gaps.tsv", tmp_path, capsys)
    assert code == 2 and output.err.count("\n") == 1
    assert ("2 of 100 rows skipped (1 without a label, 1 with empty text), more than the 1% "
            "allowed") in output.err and "--allow-skipped" in output.err
    texts, _, counts = read_labelled_data(tmp_path / "gaps.tsv", allow_skipped=True)
    assert len(texts) == 98 and counts.skipped == {"without a label": 1, "with empty text": 1}


def test_sentences_keep_unicode_line_separators(tmp_path):
    lines = [f"line\u2028{i}\tZeile\x85{i}" for i in range(12)]
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources, targets, _ = read_sentence_data(tmp_path / "pairs.tsv")
    assert sources[3] == "line\u20283" and targets[3] == "Zeile\x853" and len(sources) == 12


# Writing: a published version is never rewritten, nothing half-written is left.

PUBLISHER = """
import sys, time
sys.path.insert(0, {repo!r})
from zoo.publishing import new_version_directory
folder, start, rounds, name = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
while time.time() < start:
    pass
for index in range(rounds):
    with new_version_directory(folder) as (staging, publish):
        (staging / "writer.txt").write_text(f"{{name}} {{index}}")
        publish()
"""


def test_concurrent_exports_each_get_their_own_version(tmp_path):
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT

    code = PUBLISHER.format(repo=str(REPO_ROOT))
    start = time.time() + 1.5  # all writers begin together, after Python starts
    writers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "served"), str(start),
                                 "15", f"w{n}"]) for n in range(6)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 6
    versions = sorted(int(p.name) for p in (tmp_path / "served").iterdir())
    assert versions == list(range(1, 91))  # nothing else: no staging folder left
    written = sorted((tmp_path / "served" / str(v) / "writer.txt").read_text() for v in versions)
    assert written == sorted(f"w{n} {i}" for n in range(6) for i in range(15))


def test_published_folders_take_the_umask_modes(tiny_classifier, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        version = tiny_classifier.export(tmp_path / "served")
        tiny_classifier.save_to_preset(tmp_path / "preset")
    finally:
        os.umask(previous)
    for folder in (version, tmp_path / "preset"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    # Readable by another user: every file at least 0o644.
    for path in version.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path


def test_a_replacement_cut_short_is_recovered_and_dead_writers_staging_removed(
        tiny_classifier, tmp_path, capsys):
    import subprocess
    import sys

    run = tmp_path / "run"
    tiny_classifier.save_to_preset(run / "preset")
    # What a crash between the two renames of a replacement leaves: the old
    # preset renamed aside, and a staging folder of a process now gone.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run / "preset").rename(run / ".preset.previous")
    (run / f".preset.{gone}.0123abcd").mkdir()
    (run / f".preset.{gone}.0123abcd" / "config.json").write_text("{")
    assert main(["predict", str(run), "a fine film"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in tiny_classifier.display_labels()
    assert (run / "preset").is_dir() and not (run / ".preset.previous").exists()
    # The next write into the folder removes the dead writer's staging folder.
    tiny_classifier.save_to_preset(run / "preset")
    assert sorted(p.name for p in run.iterdir()) == ["preset"]
    # An export's leftover, as after a SIGKILL during `export`, likewise.
    served = tmp_path / "served"
    (served / f".version.{gone}.89abcdef").mkdir(parents=True)
    tiny_classifier.export(served)
    assert sorted(p.name for p in served.iterdir()) == ["1"]


def test_an_export_holds_what_inference_needs_not_the_optimizer(tiny_classifier, tmp_path):
    import tensorflow as tf

    assert tiny_classifier.optimizer is not None and tiny_classifier.optimizer.variables
    version = tiny_classifier.export(tmp_path / "served")
    saved = [name for name, _ in tf.train.list_variables(str(version / "variables" / "variables"))
             if name.endswith("VARIABLE_VALUE")]
    assert not [name for name in saved if "optimizer" in name.lower()], saved
    network = len(tiny_classifier.weights)
    seeds = sum(1 for v in tiny_classifier.variables if v.name == "seed_generator_state")
    assert len(saved) == network + seeds, saved


# Presets: every file listed and verified, nothing outside, pinned origins.

@pytest.fixture
def preset_copy(tiny_classifier, tmp_path):
    folder = tmp_path / "preset"
    tiny_classifier.save_to_preset(folder)
    return folder


def _load(folder, **kwargs):
    from zoo import TextClassifier

    return TextClassifier.from_preset(folder, **kwargs)


def test_an_unlisted_file_is_refused(preset_copy):
    import hashlib

    from zoo import TextClassifier

    labels = preset_copy / "assets" / "labels.json"
    metadata = json.loads((preset_copy / "metadata.json").read_text())
    # labels.json swapped and dropped from the metadata: once loaded unchecked.
    del metadata["files"]["assets/labels.json"]
    (preset_copy / "metadata.json").write_text(json.dumps(metadata))
    labels.write_text(json.dumps(list(reversed(json.loads(labels.read_text())))))
    with pytest.raises(ValueError, match=r"holds assets/labels.json, which metadata.json does "
                                         r"not list"):
        _load(preset_copy)
    # A stray file likewise, even with every listed file intact.
    metadata["files"]["assets/labels.json"] = hashlib.sha256(labels.read_bytes()).hexdigest()
    (preset_copy / "metadata.json").write_text(json.dumps(metadata))
    (preset_copy / "assets" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="holds assets/notes.txt, which"):
        TextClassifier.from_preset(preset_copy)
    (preset_copy / "assets" / "notes.txt").unlink()
    assert _load(preset_copy).display_labels() == json.loads(labels.read_text())


def test_links_and_names_outside_the_preset_are_refused_without_hashing_them(
        preset_copy, tmp_path):
    import hashlib

    vocabulary = preset_copy / "assets" / "vocabulary.txt"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(vocabulary.read_bytes())
    vocabulary.unlink()
    vocabulary.symlink_to(outside)  # same bytes, same hash: only the link gives it away
    with pytest.raises(ValueError, match="assets/vocabulary.txt is a symbolic link"):
        _load(preset_copy)
    vocabulary.unlink()
    vocabulary.write_bytes(outside.read_bytes())
    secret = tmp_path / "secret"
    secret.write_text("not for printing")
    metadata = json.loads((preset_copy / "metadata.json").read_text())
    for name in (str(secret), "../secret", "assets/../../secret"):
        edited = {**metadata, "files": {**metadata["files"], name: "0" * 64}}
        (preset_copy / "metadata.json").write_text(json.dumps(edited))
        with pytest.raises(ValueError, match="a preset lists relative paths") as error:
            _load(preset_copy)
        assert hashlib.sha256(secret.read_bytes()).hexdigest() not in str(error.value)


def test_an_edited_shipped_preset_is_refused_even_with_rewritten_metadata(tmp_path, monkeypatch):
    import hashlib
    import shutil

    from zoo import TextClassifier, presets

    shipped = TextClassifier.presets["rotten_tomatoes_small"]
    digest = hashlib.sha256((shipped / "metadata.json").read_bytes()).hexdigest()
    assert presets.SHIPPED_METADATA_SHA256[
        shipped.resolve().relative_to(presets.PACKAGE_DIR).as_posix()] == digest
    for folder in presets.PACKAGE_DIR.glob("*/presets/*"):
        relative = folder.relative_to(presets.PACKAGE_DIR).as_posix()
        assert presets.SHIPPED_METADATA_SHA256[relative] == hashlib.sha256(
            (folder / "metadata.json").read_bytes()).hexdigest(), relative
    # A copy of the package's zoo folder, its shipped preset edited and its
    # metadata rewritten to match: the pin in the code still refuses it.
    package = tmp_path / "zoo"
    shutil.copytree(shipped, package / "text_classifier" / "presets" / "rotten_tomatoes_small")
    edited = package / "text_classifier" / "presets" / "rotten_tomatoes_small"
    labels = edited / "assets" / "labels.json"
    labels.write_text(json.dumps(list(reversed(json.loads(labels.read_text())))))
    metadata = json.loads((edited / "metadata.json").read_text())
    metadata["files"]["assets/labels.json"] = hashlib.sha256(labels.read_bytes()).hexdigest()
    (edited / "metadata.json").write_text(json.dumps(metadata))
    monkeypatch.setattr(presets, "PACKAGE_DIR", package.resolve())
    with pytest.raises(ValueError, match="pinned for this preset in the zoo package: the "
                                         "shipped preset was edited"):
        TextClassifier.from_preset(edited)


def test_a_user_pins_the_preset_they_received(preset_copy, tmp_path, capsys):
    import hashlib

    digest = hashlib.sha256((preset_copy / "metadata.json").read_bytes()).hexdigest()
    assert _load(preset_copy, sha256=digest).num_classes == 2
    with pytest.raises(ValueError, match="this is not the preset you pinned"):
        _load(preset_copy, sha256="ab" * 32)
    from zoo import ImageClassifier
    from zoo.presets import SHIPPED_METADATA_SHA256

    shipped = SHIPPED_METADATA_SHA256["image_classifier/presets/mnist_vit_micro"]
    assert ImageClassifier.from_preset("mnist_vit_micro", sha256=shipped).num_classes == 10
    with pytest.raises(ValueError, match="this is not the preset you pinned"):
        ImageClassifier.from_preset("mnist_vit_micro", sha256="cd" * 32)
    code = main(["train", "text-classifier", "--data", str(tmp_path / "none.csv"), "--out",
                 str(tmp_path / "run"), "--preset", str(preset_copy), "--preset-sha256", "0" * 64])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not the pinned" in err


def test_a_pinned_preset_swapped_after_its_check_is_refused_as_it_loads(preset_copy):
    import hashlib

    from zoo.presets import pinned

    digest = hashlib.sha256((preset_copy / "metadata.json").read_bytes()).hexdigest()
    with pinned(preset_copy, digest) as folder:
        # Swapped between the pin's check and the load: labels inverted, the
        # metadata rewritten to match.
        labels = folder / "assets" / "labels.json"
        swapped = json.loads(labels.read_text())[::-1]
        labels.write_text(json.dumps(swapped))
        _rehash(folder)
        with pytest.raises(ValueError, match="this is not the preset you pinned"):
            _load(folder)
    assert _load(folder).display_labels() == swapped  # unpinned, it is just another preset


# Resuming: only the run it belongs to, one run per output folder.

def test_a_checkpoint_resumes_only_into_its_own_run(sentiment_sample, tmp_path, capsys):
    import keras

    from conftest import TINY_ARCHITECTURE, write_reviews_csv
    from zoo import TextClassifier
    from zoo.resume import TrainingCheckpoint, run_fingerprint

    (texts, labels), _ = sentiment_sample
    first = write_reviews_csv(tmp_path, sentiment_sample, 80)
    # What a run killed after its first epoch leaves in run/backup.
    keras.utils.set_random_seed(0)
    model = TextClassifier(labels=["fresh", "rotten"], **TINY_ARCHITECTURE)
    model.adapt(texts[:80])
    model.compile(optimizer="adam")
    backup = tmp_path / "run" / "backup"
    fingerprint = run_fingerprint(model, (texts[:80], labels[:80]), 2, 16, {"data": str(first)})
    model.fit(texts[:80], labels[:80], epochs=1, batch_size=16, verbose=0,
              callbacks=[TrainingCheckpoint(backup, fingerprint=fingerprint)])
    assert list(backup.glob("step-*"))
    # The same checkpoint, read by another run: refused, naming what differs.
    other = TrainingCheckpoint(backup, fingerprint=run_fingerprint(
        model, (texts[:60], labels[:60]), 3, 16, {"data": str(first)}))
    with pytest.raises(ValueError, match=r"holds the checkpoint of another run \(other training "
                                         r"data; epochs 2 -> 3\).*--restart"):
        other.restore(model)
    (tmp_path / "other.csv").write_text(
        "text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    code = main(["train", "text-classifier", "--data", str(tmp_path / "other.csv"), "--out",
                 str(tmp_path / "run"), "--from-scratch", "--epochs", "1"])
    output = capsys.readouterr()
    assert code == 2 and output.err.count("\n") == 1, output.err
    assert "holds the checkpoint of another run (other training data" in output.err
    assert list(backup.glob("step-*"))  # kept: nothing was discarded without --restart
    code = main(["train", "text-classifier", "--data", str(tmp_path / "other.csv"), "--out",
                 str(tmp_path / "run"), "--from-scratch", "--epochs", "1", "--restart"])
    output = capsys.readouterr()
    assert code == 0, output.err[-2000:]
    assert "--restart: discarding the checkpoint" in output.out
    assert "resuming" not in output.out


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(tmp_path, capsys):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from zoo.resume import exclusive_folder;"
         "lock = exclusive_folder(sys.argv[2]); lock.__enter__(); print('held', flush=True);"
         "time.sleep(120)", str(REPO_ROOT), str(tmp_path / "run" / "backup")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (tmp_path / "data.csv").write_text(
            "text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
        code = main(["train", "text-classifier", "--data", str(tmp_path / "data.csv"), "--out",
                     str(tmp_path / "run"), "--from-scratch", "--epochs", "1"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"is in use by another training run (process {holder.pid})" in err
    finally:
        holder.kill()
        holder.wait()


def _rehash(folder):
    """Rewrites a preset's metadata to match its edited files, as an attacker would."""
    import hashlib

    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                         for name in metadata["files"]}
    (folder / "metadata.json").write_text(json.dumps(metadata))


def test_sizes_in_a_hand_edited_config_are_bounded_before_building(preset_copy):
    config = json.loads((preset_copy / "config.json").read_text())
    config["config"]["preprocessor"]["sequence_length"] = 2e8
    (preset_copy / "config.json").write_text(json.dumps(config))
    _rehash(preset_copy)
    with pytest.raises(ValueError, match=r"config.json: sequence_length=200000000.0; a preset's "
                                         r"sequence_length is a number from 0 to 65536"):
        _load(preset_copy)


def test_a_weight_declared_larger_than_the_network_is_refused_unread(preset_copy):
    import h5py

    weights = preset_copy / "model.weights.h5"
    with h5py.File(weights, "r+") as handle:
        name = next(n for n in ("head/vars/0", "layers/head/vars/0") if n in handle)
        del handle[name]
        # 3.6 GB declared, under Keras's 4 GiB guard; HDF5 writes none of it.
        handle.create_dataset(name, shape=(30000, 30000), dtype="float32")
    assert weights.stat().st_size < 10 << 20
    _rehash(preset_copy)
    with pytest.raises(ValueError, match=r"does not match the preset's configuration: .*shapes "
                                         r"only in the file: \[\(30000, 30000\)\], only in the "
                                         r"network: \[\(32, 2\)\]"):
        _load(preset_copy)


# Ctrl-C: tests/test_zoo_scale.py stops a run with it, then resumes it.


def test_an_edited_compile_configuration_in_a_keras_file_is_refused_and_never_run(
        tiny_classifier, tmp_path):
    """A `.keras` file's model is compiled from the file (`compile_from_config`):
    an edited optimizer or loss is refused by name, and a lambda in it is
    refused by Keras's safe mode before any of it runs."""
    import zipfile

    import keras

    tiny_classifier.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        files = {name: archive.read(name) for name in archive.namelist()}

    def edited(change):
        config = json.loads(files["config.json"])
        change(config["compile_config"])
        path = tmp_path / "edited.keras"
        with zipfile.ZipFile(path, "w") as archive:
            for name, content in {**files, "config.json": json.dumps(config)}.items():
                archive.writestr(name, content)
        return path

    def unknown_optimizer(compile_config):
        compile_config["optimizer"]["class_name"] = "NoSuchOptimizer"

    ran = []
    def lambda_loss(compile_config):
        compile_config["loss"] = keras.saving.serialize_keras_object(
            lambda y_true, y_pred: ran.append(1) or y_pred)

    with pytest.raises(ValueError, match="Could not deserialize 'keras.optimizers.NoSuchOptimizer'"):
        keras.saving.load_model(edited(unknown_optimizer))
    with pytest.raises(ValueError, match="deserialization of a Python lambda"):
        keras.saving.load_model(edited(lambda_loss))
    assert not ran
    # The file as saved loads compiled as it was.
    assert keras.saving.load_model(tmp_path / "model.keras").optimizer.get_config() == \
        tiny_classifier.optimizer.get_config()


def test_an_export_onto_a_file_is_one_error_line(tiny_classifier, tmp_path, capsys):
    tiny_classifier.save_to_preset(tmp_path / "run" / "preset")
    (tmp_path / "notes.txt").write_text("mine")
    code = main(["export", str(tmp_path / "run"), "--to", str(tmp_path / "notes.txt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "notes.txt is a file" in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


# Serving: what one request may cost.

def test_the_text_export_bounds_a_request_and_answers_an_empty_one(tiny_classifier, tmp_path):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tiny_classifier.export(tmp_path / "a", max_texts=4,
                                                            max_text_bytes=50)))
    serve = loaded.signatures["serving_default"]
    empty = serve(text=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 2) and empty["label"].shape == (0,)
    assert empty["label_id"].dtype == tf.int64
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at most 4 texts \(max_texts\)"):
        serve(text=tf.constant(["fine"] * 5))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"at most 50 bytes \(max_text_bytes\)"):
        serve(text=tf.constant(["fine", "é" * 26]))  # 52 bytes in UTF-8
    answer = serve(text=tf.constant(["a fine film", "x" * 50]))  # still answering
    assert answer["probabilities"].shape == (2, 2)
    # The defaults follow the model's sequence length: 32,768 tokens a request.
    loaded = tf.saved_model.load(str(tiny_classifier.export(tmp_path / "b")))
    limit = 32_768 // tiny_classifier.sequence_length
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"at most {limit} texts"):
        loaded.signatures["serving_default"](text=tf.constant(["ok"] * (limit + 1)))
    assert loaded.signatures["serving_default"](
        text=tf.constant(["ok"] * limit))["label"].shape == (limit,)


def _gif_images(data):
    """Start and end of each image block of a GIF, walked in Python."""
    def table(packed):
        return 3 * 2 ** (packed % 8 + 1) if packed & 128 else 0

    def sub_blocks(at):
        while data[at]:
            at += data[at] + 1
        return at + 1

    at, images = 13 + table(data[10]), []
    while data[at] != 0x3B:
        if data[at] == 0x21:
            at = sub_blocks(at + 2)
        else:
            end = sub_blocks(at + 11 + table(data[at + 9]))
            images.append((at, end))
            at = end
    return images


def _gif(frames, **save):
    from PIL import Image

    buffer = io.BytesIO()
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], **save)
    return buffer.getvalue()


def test_a_folder_read_skips_a_declared_huge_image_without_decoding_it(digits_sample, tmp_path):
    import zlib

    import tensorflow as tf

    from zoo.image_classifier.image_folder import read_image_folder

    _, (images, _) = digits_sample
    png = tf.io.encode_png(images[0][..., None]).numpy()
    header = b"IHDR" + struct.pack(">II", 23000, 23000) + png[24:29]
    bomb = png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "fine.png").write_bytes(png)
    (tmp_path / "b" / "bomb.png").write_bytes(bomb)
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\).*bomb\.png"):
        read, labels, skipped = read_image_folder(tmp_path)
    assert (len(read), sorted(labels), skipped) == (2, ["a", "b"], [str(tmp_path / "b" / "bomb.png")])
    # Refused by its declared size (the check the folder read decodes through), not
    # after allocating its 529 MB.
    from zoo.image_classifier.preprocessor import decode_bounded

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"declares 529000000 pixels"):
        decode_bounded(bomb)


def test_the_image_export_refuses_a_huge_declared_image_before_decoding(
        tiny_image_classifier, digits_sample, tmp_path):
    import zlib

    import tensorflow as tf

    _, (images, _) = digits_sample
    png = tf.io.encode_png(images[0][..., None]).numpy()
    # The header of a 23000 x 23000 image on 28 x 28 data (its CRC made right):
    # decoding would allocate 529 MB before noticing anything.
    header = b"IHDR" + struct.pack(">II", 23000, 23000) + png[24:29]
    bomb = png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]
    # A GIF whose second frame declares 5000 x 5000 and stops short: it is
    # cut away, and the answer is the first frame's.
    animated = _gif([images[0], images[1]])
    (first, _), (second, _) = _gif_images(animated)
    cut_short = (animated[:second] + b"\x2c" + struct.pack("<4H", 0, 0, 5000, 5000)
                 + b"\x00\x08\x40" + b"\x55" * 40)
    # A small screen whose first image declares 20000 x 20000.
    huge_frame = animated[:first + 5] + struct.pack("<HH", 20000, 20000) + animated[first + 9:]
    loaded = tf.saved_model.load(str(tiny_image_classifier.export(
        tmp_path / "served", max_images=2, max_image_bytes=4096)))
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[1\] declares 529000000 pixels, more than the 16777216"):
        serve(image_bytes=tf.constant([png, bomb]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[0\] declares 400000000 pixels"):
        serve(image_bytes=tf.constant([huge_frame]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at most 2 images \(max_images\)"):
        serve(image_bytes=tf.constant([png] * 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at most 4096 bytes"):
        serve(image_bytes=tf.constant([png + b"\0" * 4096]))
    assert serve(image_bytes=tf.constant([], tf.string))["probabilities"].shape == (0, 10)
    pixels = loaded.signatures["predict_images"]
    assert pixels(images=tf.zeros((0, 28, 28, 1), tf.uint8))["label"].shape == (0,)
    answers = serve(image_bytes=tf.constant([png, cut_short]))  # still answering
    assert answers["label"].shape == (2,)
    np.testing.assert_array_equal(
        answers["probabilities"][1],
        serve(image_bytes=tf.constant([png, _gif([images[0]])]))["probabilities"][1])


def test_the_image_export_bounds_the_pixels_of_a_whole_request_before_decoding(
        tiny_image_classifier, digits_sample, tmp_path):
    """32 small 16-bit RGBA PNGs each declaring 4096 x 4096 (each under the
    per-image bounds) held a TF-only server for 61 s and 1.97 GB; the
    request's declared pixels together are now refused before any decoding."""
    import zlib

    import tensorflow as tf

    from zoo.image_classifier.image_classifier import MAX_REQUEST_PIXELS

    _, (images, _) = digits_sample
    png = tf.io.encode_png(images[0][..., None]).numpy()
    header = b"IHDR" + struct.pack(">IIBBBBB", 4096, 4096, 16, 6, 0, 0, 0)
    forged = png[:12] + header + struct.pack(">I", zlib.crc32(header)) + png[33:]
    loaded = tf.saved_model.load(str(tiny_image_classifier.export(tmp_path / "served")))
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"declare at most {MAX_REQUEST_PIXELS} pixels together "
                             r"\(max_request_pixels\)"):
        serve(image_bytes=tf.constant([forged] * 32))
    # Two of the largest image pass the bound: the request is judged by
    # what the images declare together, each image by its own bounds.
    assert 2 * 4096 * 4096 <= MAX_REQUEST_PIXELS < 3 * 4096 * 4096
    with pytest.raises(tf.errors.InvalidArgumentError, match="together"):
        serve(image_bytes=tf.constant([forged] * 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="together"):
        loaded.signatures["predict_images"](images=tf.zeros((3, 4096, 4096, 1), tf.uint8))
    # Small images in numbers still answer, one pixel count per image.
    assert serve(image_bytes=tf.constant([png] * 32))["label"].shape == (32,)
    small = tiny_image_classifier.export(tmp_path / "small", max_request_pixels=2 * 28 * 28)
    small_serve = tf.saved_model.load(str(small)).signatures["serving_default"]
    assert small_serve(image_bytes=tf.constant([png] * 2))["label"].shape == (2,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at most 1568 pixels together"):
        small_serve(image_bytes=tf.constant([png] * 3))


def test_only_the_first_frame_of_a_gif_is_decoded():
    import tensorflow as tf

    from zoo.image_classifier.preprocessor import first_gif_frame

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 40, 30), dtype=np.uint8)
    for save in ({}, {"loop": 0, "duration": 40, "comment": b"x" * 600}):
        animated = _gif(frames, **save)
        assert tf.io.decode_gif(animated).shape[0] == 6
        cut, pixels = first_gif_frame(tf.constant(animated))
        assert pixels == 40 * 30
        assert len(_gif_images(animated)) == 6
        assert cut.numpy() == animated[:_gif_images(animated)[0][1]] + b";"
        assert tf.io.decode_gif(cut).shape[0] == 1
        np.testing.assert_array_equal(tf.io.decode_gif(cut)[0], tf.io.decode_gif(animated)[0])
    single = _gif(frames[:1])
    assert first_gif_frame(tf.constant(single))[0].numpy() == single
    # Blocks that run past the end, or no image at all: cut where the data
    # ends, never read past it.
    for broken in (b"GIF89a" + b"\0" * 7 + b"\x21\xf9\xff", b"GIF89a", single[:60]):
        cut, _ = first_gif_frame(tf.constant(broken))
        assert cut.numpy().startswith(broken[:6])
        assert len(cut.numpy()) <= len(broken) + 1


def test_the_translator_export_bounds_a_request(tmp_path):
    import tensorflow as tf

    from zoo import Translator

    model = Translator.from_preset("gramps_en_de_small")
    loaded = tf.saved_model.load(str(model.export(tmp_path / "served", beam_size=1,
                                                  max_texts=2, max_text_bytes=40)))
    for name in ("serving_default", "translate_with_scores"):
        serve = loaded.signatures[name]
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"at most 2 texts"):
            serve(text=tf.constant(["Open the tree"] * 3))
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"at most 40 bytes"):
            serve(text=tf.constant(["Open " * 9]))
        assert serve(text=tf.constant([], tf.string))["translation"].shape == (0,)
        assert serve(text=tf.constant(["Open the family tree", "Close"]))[
            "translation"].shape == (2,)


def test_a_checkpoint_the_disk_cannot_hold_is_refused_by_name_and_free_space(tmp_path):
    import shutil

    from zoo.resume import check_free_space

    free = shutil.disk_usage(tmp_path).free
    (tmp_path / "step-000000002").mkdir()
    with pytest.raises(ValueError, match=rf"{tmp_path}: \d+\.\d MB free, and the checkpoint "
                                         r"needs \d+\.\d MB; the previous checkpoint is kept"):
        check_free_space(tmp_path, free + (1 << 30))
    assert (tmp_path / "step-000000002").is_dir()
    check_free_space(tmp_path, 1 << 20)  # room enough: no error


def test_a_disk_that_fills_while_a_checkpoint_is_written_keeps_the_previous_one(tmp_path):
    import resource
    import signal

    import keras

    from zoo.resume import TrainingCheckpoint

    # A real write failure: from the second epoch on, no file may grow past
    # 64 KB (RLIMIT_FSIZE; with SIGXFSZ ignored a write past it fails with
    # EFBIG, as one on a full disk fails with ENOSPC).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    class DiskFillsAtTheSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))

    model = keras.Sequential([keras.Input((100,)), keras.layers.Dense(200),
                              keras.layers.Dense(2)])
    model.compile("adam", "mse")
    checkpoint = TrainingCheckpoint(tmp_path / "backup")
    try:
        with pytest.raises(ValueError, match=(
                r"backup: writing the checkpoint at step 2 failed \(File too large\); "
                r"\d+\.\d MB free\. The previous checkpoint is kept\. Free some space")):
            model.fit(np.ones((4, 100)), np.ones((4, 2)), batch_size=4, epochs=2, verbose=0,
                      callbacks=[DiskFillsAtTheSecondEpoch(), checkpoint])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["step-000000001"]
    model.compile("adam", "mse")
    assert checkpoint.restore(model)["steps"] == 1


def test_a_checkpoint_with_an_edited_step_history_is_read_as_unreadable(tmp_path, capsys):
    import json

    import keras

    from zoo.resume import TrainingCheckpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), batch_size=4, epochs=2, verbose=0,
              callbacks=[TrainingCheckpoint(tmp_path / "backup")])
    newest = tmp_path / "backup" / "step-000000002" / TrainingCheckpoint.STATE_FILE
    state = json.loads(newest.read_text())
    assert state["step_history"]["epoch_ends"] == [1, 2]
    for edited in ({"stride": 0}, {"metrics": {"loss": ["not a number"]}},
                   {"metrics": {"step": [1, 2], "loss": [0.5]}}, "a string"):
        newest.write_text(json.dumps({**state, "step_history": edited}))
        checkpoint = TrainingCheckpoint(tmp_path / "backup")
        model.compile("adam", "mse")
        # The older checkpoint is taken, with its own record, not the edited one.
        assert checkpoint.restore(model)["steps"] == 1
        assert checkpoint.step_history.epoch_ends == [1]
        assert "step-000000002 is unreadable (malformed step history" in capsys.readouterr().out
