"""The command line's defaults on a small file: 201 WordNet definitions in 3
topics (67 each), `python -m zoo train text-classifier --data topics.csv`
(MiniLM by default), with early stopping and time-based checkpoints (the
defaults) and without them (`--patience 0 --checkpoint-minutes 0`: what the
defaults were before), each in a fresh process: wall time, bytes written
(the child's output blocks, as GNU time counts them), epochs, and accuracy on
600 held-out definitions of the same topics. Writes the section "Fine-tuning
defaults on a small file" of RESULTS.md.

    python bench/fine_tuning_defaults.py
"""

import csv
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
TOPICS = ("animal", "food", "artifact")
PER_TOPIC = 67
HELD_OUT_PER_TOPIC = 200


def topic_files(folder):
    """`(topics.csv, held_out.csv)`: the first definitions of each topic."""
    import numpy as np

    from zoo.datasets import load_definitions

    (texts, labels), (test_texts, test_labels) = load_definitions()
    for name, (inputs, names), count in (("topics.csv", (texts, labels), PER_TOPIC),
                                         ("held_out.csv", (test_texts, test_labels),
                                          HELD_OUT_PER_TOPIC)):
        rows = [(text, topic) for topic in TOPICS
                for text in np.asarray(inputs)[np.asarray(names) == topic][:count]]
        with open(folder / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return folder / "topics.csv", folder / "held_out.csv"


def run(arguments, cwd):
    """`(seconds, bytes written, stdout)` of one command in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "zoo", *arguments], cwd=cwd, text=True,
                          capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3"))
    seconds = time.monotonic() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    written = (resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock - before) * 512
    return seconds, written, done.stdout


def main():
    from results import update_section

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        data, held_out = topic_files(folder)
        for name, extra in (("defaults (patience 5, backups every 5 minutes)", []),
                            ("every epoch (--patience 0 --checkpoint-minutes 0)",
                             ["--patience", "0", "--checkpoint-minutes", "0"])):
            out = folder / f"run{len(rows)}"
            seconds, written, stdout = run(["train", "text-classifier", "--data", str(data),
                                            "--out", str(out), *extra], folder)
            report = json.loads((out / "report.json").read_text())
            _, _, evaluated = run(["evaluate", str(out), "--data", str(held_out)], folder)
            accuracy = float(re.search(r"^accuracy: ([0-9.]+)", evaluated, re.M).group(1))
            stopped = next((line for line in stdout.splitlines()
                            if line.startswith("stopped at epoch")), "")
            print(f"{name}: {seconds:.0f} s, {written / 2**30:.2f} GiB written, "
                  f"{report['epochs_trained']} of {report['epochs']} epochs, validation "
                  f"{report['score']['value']:.3f}, held-out {accuracy:.3f}. {stopped}",
                  flush=True)
            rows.append((name, seconds, written, report, accuracy, stopped))
    lines = [
        f"`python bench/fine_tuning_defaults.py` ({os.cpu_count()} CPU cores, "
        f"{time.strftime('%Y-%m-%d')}). `python -m zoo train text-classifier --data "
        f"topics.csv --out run` (MiniLM by default) on {3 * PER_TOPIC} WordNet definitions of "
        f"{len(TOPICS)} topics ({', '.join(TOPICS)}), each in a fresh process; held-out: "
        f"`python -m zoo evaluate` on {3 * HELD_OUT_PER_TOPIC} test definitions of the same "
        "topics. Written: the process's output blocks (GNU time's count), checkpoints, "
        "preset, export and figures together.",
        "",
        "| run | seconds | written | epochs | validation accuracy | held-out accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, seconds, written, report, accuracy, stopped in rows:
        lines.append(f"| {name} | {seconds:.0f} | {written / 2**30:.2f} GiB | "
                     f"{report['epochs_trained']} of {report['epochs']} | "
                     f"{report['score']['value']:.3f} | {accuracy:.3f} |")
    lines += ["", f"The default run's line: `{rows[0][5]}`."]
    update_section("Fine-tuning defaults on a small file", "\n".join(lines))


if __name__ == "__main__":
    main()
