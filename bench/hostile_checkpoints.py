"""The MiniLM checkpoint folder changed one hostile way at a time, through
`python -m zoo convert FOLDER --to OUT`, each in a fresh process: its exit
code, its wall time, its peak memory and its one `error:` line; and the time
`TextClassifier.from_preset("all_minilm_l6_v2")` takes to load the body.
Writes the section "Hostile checkpoint folders" of RESULTS.md.

    python bench/hostile_checkpoints.py
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# Runs the command line in a child and reports the child's peak memory.
MEASURED = """
import resource, subprocess, sys, time
start = time.monotonic()
try:
    done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)
    code, err = done.returncode, done.stderr
except subprocess.TimeoutExpired:
    code, err = "timeout", ""
seconds = time.monotonic() - start
print(code, f"{seconds:.1f}", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
print(err.strip().splitlines()[-1] if err.strip() else "")
"""


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def cases(outside):
    """`{row: change(folder)}`, the rows of issue 32's table."""
    def vocabulary(folder):
        (folder / "vocab.txt").unlink()
        return folder / "vocab.txt"

    def cut_weights(folder):
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:len(data) // 2])

    def nul_token(folder):
        with open(folder / "vocab.txt", "a") as handle:
            handle.write("bad\0token\n")

    return {
        "unchanged (vocab.txt beside the weights)": lambda folder: None,
        "`vocab.txt` a symlink to a file outside the folder":
            lambda folder: vocabulary(folder).symlink_to(outside),
        "`vocab.txt` -> `/dev/zero`": lambda folder: vocabulary(folder).symlink_to("/dev/zero"),
        "`vocab.txt` the device node of `/dev/zero`": lambda folder: os.mknod(
            vocabulary(folder), stat.S_IFCHR | 0o444, os.makedev(1, 5)),
        "`vocab.txt` a FIFO": lambda folder: os.mkfifo(vocabulary(folder)),
        "`config.json` with 10,000 layers": lambda folder: edit_config(folder,
                                                                       num_hidden_layers=10_000),
        "`config.json` with hidden size 10^6": lambda folder: edit_config(folder,
                                                                          hidden_size=10 ** 6),
        "`config.json` with 96 layers (real sizes, too few weights)":
            lambda folder: edit_config(folder, num_hidden_layers=96),
        "`num_attention_heads: 0`": lambda folder: edit_config(folder, num_attention_heads=0),
        "`layer_norm_eps: NaN`": lambda folder: edit_config(folder, layer_norm_eps=float("nan")),
        "`model.safetensors` cut in half": cut_weights,
        "`tokenizer.json` holding a JSON list":
            lambda folder: (folder / "tokenizer.json").write_text("[1, 2]"),
        "a vocabulary token holding NUL": nul_token,
        "a 10^5-deep `tokenizer_config.json`": lambda folder: (
            folder / "tokenizer_config.json").write_text("[" * 10 ** 5 + "]" * 10 ** 5),
        "`sentence_bert_config.json` with `max_seq_length: \"12\"`": lambda folder: (
            folder / "sentence_bert_config.json").write_text('{"max_seq_length": "12"}'),
        "`pytorch_model.bin` a FIFO beside the weights (never read)": lambda folder: os.mkfifo(
            folder / "pytorch_model.bin"),
    }


def minilm_folder(root):
    """MiniLM's Hugging Face folder from its package, with a `vocab.txt`
    written from its `tokenizer.json` (as most BERT folders have one)."""
    import zipfile

    from zoo.text_transformer.bodies import packaged_checkpoint_zip

    folder = root / "minilm"
    with zipfile.ZipFile(packaged_checkpoint_zip("all_minilm_l6_v2")) as zipped:
        zipped.extractall(folder)
    vocabulary = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    (folder / "vocab.txt").write_text(
        "".join(token + "\n" for token, _ in sorted(vocabulary.items(), key=lambda i: i[1])))
    return folder


def load_seconds(repeats=3):
    from zoo.text_transformer import bodies

    bodies.load_body("all_minilm_l6_v2")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bodies.load_body("all_minilm_l6_v2")
        times.append(time.perf_counter() - start)
    return times


def main():
    from results import update_section

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = minilm_folder(root)
        outside = root / "outside.txt"
        outside.write_text("[PAD]\n[UNK]\nsecret\n")
        for number, (row, change) in enumerate(cases(outside).items()):
            folder = root / f"case{number}"
            shutil.copytree(source, folder)
            change(folder)
            out = root / f"out{number}"
            done = subprocess.run(
                [sys.executable, "-c", MEASURED, sys.executable, "-m", "zoo", "convert",
                 str(folder), "--to", str(out)],
                capture_output=True, text=True, cwd=REPO,
                env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3"))
            code, seconds, peak = done.stdout.splitlines()[0].split()
            message = done.stdout.splitlines()[1] if len(done.stdout.splitlines()) > 1 else ""
            message = message.replace(str(root), "…")
            written = "yes" if out.exists() else "nothing"
            print(f"{row}: exit {code}, {seconds} s, {peak} MB, {written}: {message}", flush=True)
            rows.append((row, code, seconds, peak, written, message))
    times = load_seconds()
    lines = [
        f"`python bench/hostile_checkpoints.py` ({os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}). The MiniLM folder from its package (a `vocab.txt` "
        "written from its `tokenizer.json`), changed one way per row, through `python -m zoo "
        "convert FOLDER --to OUT` in a fresh process: exit code, wall time (TensorFlow's start "
        "included, about 4 s), the process's peak memory, what was written, and its one "
        "`error:` line (`…` is the scratch folder). Before issue 32, `/dev/zero` passed 6 GB "
        "in 29 s without answering, the FIFO hung, 10,000 layers were still building after "
        "120 s, and the rest ended in tracebacks with exit 1.",
        "",
        "| folder | exit | seconds | peak MB | written | message |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row, code, seconds, peak, written, message in rows:
        lines.append(f"| {row} | {code} | {seconds} | {peak} | {written} | "
                     f"{message.replace('|', '/')} |")
    lines += ["", "Loading the packaged MiniLM body (`load_body(\"all_minilm_l6_v2\")`: unzip, "
              "private checked copy, keras-hub's read, conversion), warm: "
              + ", ".join(f"{t:.2f}" for t in times) + " s."]
    update_section("Hostile checkpoint folders", "\n".join(lines))


if __name__ == "__main__":
    main()
