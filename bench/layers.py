"""Forward+backward time and peak memory of each layer next to its Keras equivalent.

Every measurement runs in a fresh process, so its peak resident memory is its
own. A watchdog ends a measurement whose memory passes `--memory-limit-gb`
(the machine has 24 GB), and the table records that it did not fit.

Usage: `make bench` or `python bench/layers.py [--quick] [--only KIND] [--out bench/RESULTS.md]`;
raw figures are kept in bench/layers_results.json so `--only` can refresh one pair.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

BATCH, HEADS, HEAD_DIM = 1, 8, 64
WIDTH = HEADS * HEAD_DIM
WINDOW = 256
LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)

# (our layer, the Keras equivalent), measured at the same lengths.
PAIRS = {
    "multi_head": ("MultiHead (self)", "keras MultiHeadAttention (self)"),
    "local_window": (f"LocalWindow(w={WINDOW})", f"keras MultiHeadAttention(sliding_window={WINDOW})"),
    "additive": ("Additive", "keras AdditiveAttention (self inputs)"),
}


def build(kind, ours):
    import keras

    import keras_selfattn as ksa

    if kind == "multi_head":
        layer = ksa.MultiHead(HEADS, HEAD_DIM) if ours else keras.layers.MultiHeadAttention(HEADS, HEAD_DIM)
        return layer, (lambda x: layer(x)) if ours else (lambda x: layer(x, x))
    if kind == "local_window":
        if ours:
            layer = ksa.LocalWindow(HEADS, HEAD_DIM, window_size=WINDOW)
            return layer, lambda x: layer(x)
        layer = keras.layers.MultiHeadAttention(HEADS, HEAD_DIM, sliding_window=WINDOW)
        return layer, lambda x: layer(x, x)
    if kind == "additive":
        if ours:
            layer = ksa.Additive(units=WIDTH)
            return layer, lambda x: layer(x)
        layer = keras.layers.AdditiveAttention()
        return layer, lambda x: layer([x, x])
    raise ValueError(f"unknown kind {kind!r}")


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_one(kind, ours, length, repeats, memory_limit):
    """Runs in the child: prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    layer, apply = build(kind, ours)
    x = tf.constant(np.random.default_rng(0).normal(size=(BATCH, length, WIDTH)).astype("float32"))
    apply(x[:, :8])  # builds the weights

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(tf.square(apply(inputs)))
        return tape.gradient(loss, [inputs] + layer.trainable_weights)

    baseline = _resident_bytes()

    def watchdog():
        while True:
            if _resident_bytes() > memory_limit:
                print(json.dumps({"status": "over_limit"}), flush=True)
                os._exit(3)
            time.sleep(0.02)

    threading.Thread(target=watchdog, daemon=True).start()
    step(x)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The fastest run: on a shared 2-core machine, slower runs measure noise.
    print(json.dumps({
        "status": "ok",
        "seconds": min(times),
        "peak_bytes": peak - baseline,
    }), flush=True)


def run_child(kind, ours, length, repeats, memory_limit, timeout):
    command = [sys.executable, __file__, "--child", kind, str(int(ours)), str(length),
               str(repeats), str(memory_limit)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"status": "failed", "error": done.stderr[-500:]}


def cell(result, limit_gb):
    if result["status"] == "ok":
        return f"{result['seconds'] * 1000:.0f} ms / {result['peak_bytes'] / 2**30:.2f} GB"
    if result["status"] == "over_limit":
        return f"over {limit_gb:g} GB"
    if result["status"] == "timeout":
        return "not done in 600 s"
    return result["status"]


def ratio(ours, theirs):
    if ours["status"] != "ok":
        return "-"
    if theirs["status"] != "ok":
        return "Keras did not fit"
    speed = theirs["seconds"] / ours["seconds"]
    memory = theirs["peak_bytes"] / max(ours["peak_bytes"], 1)
    return f"{speed:.2f}x faster, {memory:.1f}x less memory"


RAW_RESULTS = Path(__file__).with_name("layers_results.json")


def repeats_for(length):
    return 5 if length <= 2048 else 3 if length <= 4096 else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths up to 2048 only")
    parser.add_argument("--only", choices=sorted(PAIRS), help="re-measure one pair, keep the others")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--memory-limit-gb", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--render", action="store_true", help="rewrite the table from the raw figures only")
    args = parser.parse_args()
    limit = int(args.memory_limit_gb * 2**30)
    lengths = [t for t in LENGTHS if not args.quick or t <= 2048]
    keep = args.only or args.render
    raw = json.loads(RAW_RESULTS.read_text()) if RAW_RESULTS.exists() and keep else {}

    for kind in [] if args.render else PAIRS if args.only is None else [args.only]:
        skipped = {}  # a layer that did not fit at T does not fit beyond
        for length in lengths:
            results = {}
            for side in ("ours", "keras"):
                if side in skipped:
                    results[side] = {"status": skipped[side]}
                    continue
                results[side] = run_child(kind, side == "ours", length, repeats_for(length), limit, args.timeout)
                if results[side]["status"] != "ok":
                    skipped[side] = results[side]["status"]
            raw[f"{kind}|{length}"] = results
            print(f"{kind:13s} T={length:6d}  ours {cell(results['ours'], args.memory_limit_gb):22s} "
                  f"keras {cell(results['keras'], args.memory_limit_gb):22s} "
                  f"{ratio(results['ours'], results['keras'])}", flush=True)

    if not args.quick and not args.render and args.only in (None, "local_window"):
        raw["local_window|32768"] = {"ours": run_child("local_window", True, 32768, 1, limit, args.timeout)}
        print(f"local_window  T= 32768  ours {cell(raw['local_window|32768']['ours'], args.memory_limit_gb)}", flush=True)

    RAW_RESULTS.write_text(json.dumps(raw, indent=1, sort_keys=True))
    rows = [(kind, *PAIRS[kind], length, raw[f"{kind}|{length}"]["ours"], raw[f"{kind}|{length}"]["keras"])
            for kind in PAIRS for length in LENGTHS if f"{kind}|{length}" in raw]
    long_run = raw.get("local_window|32768", {}).get("ours")
    write_results(args.out, rows, long_run, args.memory_limit_gb)


def write_results(path, rows, long_run, limit_gb):
    import keras
    import tensorflow as tf

    from results import update_section

    lines = [
        f"Latest run: {datetime.date.today().isoformat()}, `python bench/layers.py` on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}.",
        "",
        f"Batch {BATCH}, width {WIDTH} ({HEADS} heads of {HEAD_DIM}), float32, `tf.function` without XLA. "
        "Each cell: fastest of 5 (T <= 2048), 3 (T = 4096) or 1 (longer) forward+backward steps / peak resident memory above the process's "
        f"baseline, each measured in a fresh process; `over {limit_gb:g} GB` means the watchdog stopped it there "
        "(the machine has 24 GB). Keras's AdditiveAttention has no projections and one head; ours projects Q/K/V.",
        "",
        "| layer | T | ours | Keras | ratio (Keras / ours) |",
        "|---|---:|---|---|---|",
    ]
    for kind, our_name, their_name, length, ours, theirs in rows:
        lines.append(
            f"| {our_name} vs {their_name} | {length} | {cell(ours, limit_gb)} | "
            f"{cell(theirs, limit_gb)} | {ratio(ours, theirs)} |"
        )
    if long_run is not None:
        scores_gb = HEADS * 32768 ** 2 * 4 / 2**30
        lines += [
            "",
            f"LocalWindow(w={WINDOW}) at T=32768: {cell(long_run, limit_gb)}. "
            f"Keras's MultiHeadAttention(sliding_window={WINDOW}) materializes the full (B, H, T, T) scores: "
            f"{scores_gb:.0f} GB for one float32 score tensor alone, more than this machine has, so it is not run.",
        ]
    print(f"wrote {update_section('Attention layers: forward + backward on the CPU', chr(10).join(lines), path)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, ours, length, repeats, limit = sys.argv[2:7]
        measure_one(kind, bool(int(ours)), int(length), int(repeats), int(limit))
    else:
        main()
