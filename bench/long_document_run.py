"""The whole `train` process on long documents: `python -m zoo train
text-classifier` on 12 documents of over 4,096 tokens (`--sequence-length 4096
--attention local_window --window-size 256 --global-tokens 1 --batch-size 2`,
MiniLM by default), with and without `--rematerialize`, each in a fresh
process: its peak resident memory (the whole process: training, the attention
statistics, evaluation, figures, the preset and the SavedModel export), the
peak reached by the end of training, and wall time. Writes the section "Long
documents: the whole run" of RESULTS.md.

    python bench/long_document_run.py [--epochs 1]
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
DOCUMENTS = 12
WORDS = 4200  # over 4,096 WordPiece tokens: a review's words are at least one each
SHARE = 0.65
OPTIONS = ["--sequence-length", "4096", "--attention", "local_window", "--window-size", "256",
           "--global-tokens", "1", "--batch-size", "2"]
# The line `train` prints once training is over; the rest is evaluation,
# figures, the preset and the export.
TRAINED = "Evaluation on the"


def documents_file(path):
    """12 documents, each joined from reviews of which about 65% share its label."""
    import numpy as np

    from zoo.datasets import load_sentiment

    (texts, labels), _ = load_sentiment()
    rng = np.random.default_rng(0)
    pools = [np.flatnonzero(labels == value) for value in (0, 1)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for index in range(DOCUMENTS):
            label = index % 2
            parts, words = [], 0
            while words < WORDS:
                side = label if rng.random() < SHARE else 1 - label
                text = str(texts[rng.choice(pools[side])])
                parts.append(text)
                words += len(text.split())
            writer.writerow([" ".join(parts), ("rotten", "fresh")[label]])
    return path


def high_water(pid):
    """The process's peak resident set so far (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status
                    if line.startswith("VmHWM"))


def run(arguments, cwd):
    """`(whole-run peak, peak by the end of training, seconds, stdout)` of one
    `python -m zoo` in a fresh process."""
    start = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "zoo", *arguments], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3"))
    lines, trained = [], [None]

    def read():
        for line in child.stdout:
            lines.append(line)
            if line.startswith(TRAINED) and trained[0] is None:
                trained[0] = high_water(child.pid)

    reader = threading.Thread(target=read)
    reader.start()
    # ru_maxrss of a reaped child is read through wait4.
    _, status, usage = os.wait4(child.pid, 0)
    reader.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    if child.returncode:
        raise RuntimeError("".join(lines)[-3000:])
    return usage.ru_maxrss * 1024, trained[0], seconds, "".join(lines)


def main(argv=None):
    from results import update_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = documents_file(folder / "documents.csv")
        for name, extra in (("--rematerialize", ["--rematerialize"]), ("without", [])):
            out = folder / f"run{len(rows)}"
            peak, trained, seconds, stdout = run(
                ["train", "text-classifier", "--data", str(data), "--out", str(out),
                 "--epochs", str(args.epochs), *OPTIONS, *extra], folder)
            print(stdout, flush=True)
            print(f"{name}: whole run {peak / 2**30:.2f} GiB, by the end of training "
                  f"{trained / 2**30:.2f} GiB, {seconds:.0f} s", flush=True)
            rows.append((name, peak, trained, seconds))
    lines = [
        f"`python bench/long_document_run.py --epochs {args.epochs}` ({os.cpu_count()} CPU "
        f"cores): `python -m zoo train text-classifier --data documents.csv {' '.join(OPTIONS)} "
        f"--epochs {args.epochs}` (MiniLM, the default body) on {DOCUMENTS} documents of over "
        "4,096 WordPiece tokens, in a fresh process each. Peak memory is the process's maximum "
        "resident set: by the end of training (the steps, validation and the attention "
        "statistics at each epoch's end), and for the whole run (evaluation, `attention.png`, "
        "`training_curves.png`, the preset and the SavedModel export included). The issue's "
        "bounds: 4 GB with `--rematerialize`, 6 GB without.",
        "",
        "| configuration | whole run peak | peak by the end of training | wall time |",
        "|---|---:|---:|---:|",
    ]
    for name, peak, trained, seconds in rows:
        lines.append(f"| {name} | {peak / 2**30:.2f} GiB ({peak / 1e9:.2f} GB) | "
                     f"{trained / 2**30:.2f} GiB | {seconds:.0f} s |")
    update_section("Long documents: the whole run", "\n".join(lines))


if __name__ == "__main__":
    main()
