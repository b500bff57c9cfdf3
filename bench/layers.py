"""Forward+backward time and peak memory of each layer next to its Keras equivalent.

Every measurement runs in a fresh process, so its peak resident memory is its
own. A watchdog ends a measurement whose memory passes `--memory-limit-gb`
(the machine has 24 GB), and the table records that it did not fit.
`MultiHead` and `LocalWindow` are measured with and without XLA
(`jit_compile=True`), and each row gives the share of the machine's matmul
ceiling (a 2048^3 float32 matmul, measured in the same run) that its useful
matmul work reaches.

`--backend jax` measures the same on Keras's JAX backend against Keras's
layers on JAX (every step compiled by `jax.jit`, so there is no separate XLA
row) at T = 512, 2048 and 8192, and ours at 32768, into the section
"Attention layers on JAX".

Usage: `make bench` or `python bench/layers.py [--backend jax] [--quick] [--only KIND] [--out bench/RESULTS.md]`;
raw figures are kept in bench/layers_results.json (bench/layers_results_jax.json) so `--only`
can refresh one pair.
"""

import argparse
import datetime
import functools
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
# Lengths only our layers are run at: Keras needs 32 GB for one score tensor.
LONG_LENGTH = 32768
# (kind, batch, T) measured besides batch 1 at every length.
EXTRA_BATCHES = (("multi_head", 8, 512),)
WITH_XLA = ("multi_head", "local_window")
# Additive at T=16384 did not finish in 600 s in earlier runs: not tried.
MAX_LENGTH = {"additive": 8192}

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


def useful_flops(kind, batch, length):
    """Matmul FLOPs of one forward+backward step that any implementation
    must do: the 4 projections (forward, and input and weight gradients),
    and 6 score-sized matmuls (QK^T and PV forward; dV, dP, dQ, dK) over the
    keys each query may see. Recomputation is not counted as useful."""
    projections = 4 * 3 * 2 * batch * length * WIDTH * WIDTH
    if kind == "multi_head":
        keys_seen = length
    elif kind == "local_window":
        keys_seen = min(length, 2 * WINDOW - 1)
    else:
        return None
    return projections + 6 * 2 * batch * HEADS * length * keys_seen * HEAD_DIM


def measure_ceiling():
    """Runs in the child: best GFLOP/s of a 2048^3 float32 matmul."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    if keras.backend.backend() == "jax":
        import jax

        a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048))
        matmul = jax.jit(lambda x, y: x @ y)
        run = lambda: matmul(a, a).block_until_ready()  # noqa: E731
    else:
        import tensorflow as tf

        a, b = tf.random.normal((2048, 2048)), tf.random.normal((2048, 2048))
        matmul = tf.function(tf.matmul)
        run = lambda: matmul(a, b).numpy()  # noqa: E731
    run()
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    print(json.dumps({"status": "ok", "gflops": 2 * 2048 ** 3 / best / 1e9}), flush=True)


def measure_one(kind, ours, length, repeats, memory_limit, batch=BATCH, jit=False):
    """Runs in the child: prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    layer, apply = build(kind, ours)
    x = keras.ops.convert_to_tensor(
        np.random.default_rng(0).normal(size=(batch, length, WIDTH)).astype("float32"))
    apply(x[:, :8])  # builds the weights
    if keras.backend.backend() == "jax":
        import jax

        variables = layer.trainable_weights

        def loss(values, inputs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return keras.ops.sum(keras.ops.square(apply(inputs)))

        gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))
        values = [v.value for v in variables]

        def step(inputs):
            return jax.block_until_ready(gradient(values, inputs))
    else:
        import tensorflow as tf

        @tf.function(jit_compile=jit)
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


def run_child(kind, ours, length, repeats, memory_limit, timeout, batch=BATCH, jit=False,
              backend="tensorflow"):
    command = [sys.executable, __file__, "--child", kind, str(int(ours)), str(length),
               str(repeats), str(memory_limit), str(batch), str(int(jit))]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
               KERAS_BACKEND=backend)
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
    if result["status"] == "skipped":
        return f"not run (did not fit at T={result['after']})"
    if any(word in result.get("error", "") for word in ("OOM", "ResourceExhausted", "bad_alloc", "MemoryError")):
        return "out of memory"
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
RAW_RESULTS_JAX = Path(__file__).with_name("layers_results_jax.json")
# The lengths measured on JAX (and ours alone at LONG_LENGTH).
JAX_LENGTHS = (512, 2048, 8192)


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
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow",
                        help="the Keras backend of both sides (default tensorflow)")
    args = parser.parse_args()
    on_jax = args.backend == "jax"
    limit = int(args.memory_limit_gb * 2**30)
    lengths = [t for t in (JAX_LENGTHS if on_jax else LENGTHS) if not args.quick or t <= 2048]
    keep = args.only or args.render
    raw_path = RAW_RESULTS_JAX if on_jax else RAW_RESULTS
    raw = json.loads(raw_path.read_text()) if raw_path.exists() and keep else {}
    kinds = WITH_XLA if on_jax else PAIRS

    configurations = []  # (kind, batch, length, jit)
    for kind in [] if args.render else kinds if args.only is None else [args.only]:
        # On JAX every step is compiled by jax.jit: one row per length.
        for jit in (False, True) if kind in WITH_XLA and not on_jax else (False,):
            configurations += [(kind, BATCH, length, jit) for length in lengths
                               if length <= MAX_LENGTH.get(kind, length)]
            configurations += [(k, b, t, jit) for k, b, t in EXTRA_BATCHES
                               if k == kind and not on_jax]
    run = functools.partial(run_child, backend=args.backend)
    if not args.render:
        raw["matmul_ceiling"] = run("ceiling", True, 0, 0, limit, args.timeout)
        print(f"matmul ceiling: {raw['matmul_ceiling'].get('gflops', 0):.0f} GFLOP/s", flush=True)
    skipped = {}  # a layer that did not fit at T does not fit beyond (same batch, XLA)
    for kind, batch, length, jit in configurations:
        results = {}
        for side in ("ours", "keras"):
            group = (kind, side, batch, jit)
            if group in skipped:
                results[side] = {"status": "skipped", "after": skipped[group]}
                continue
            results[side] = run(kind, side == "ours", length, repeats_for(length), limit,
                                args.timeout, batch, jit)
            if results[side]["status"] != "ok":
                skipped[group] = length
        raw[config_key(kind, batch, length, jit)] = results
        print(f"{kind:13s} B={batch} T={length:6d} xla={int(jit)}  ours {cell(results['ours'], args.memory_limit_gb):22s} "
              f"keras {cell(results['keras'], args.memory_limit_gb):22s} "
              f"{ratio(results['ours'], results['keras'])}", flush=True)

    if not args.quick and not args.render:
        for kind in WITH_XLA if args.only is None else [k for k in WITH_XLA if k == args.only]:
            result = run(kind, True, LONG_LENGTH, 1, limit, args.timeout)
            raw[config_key(kind, BATCH, LONG_LENGTH, False)] = {"ours": result}
            print(f"{kind:13s} T={LONG_LENGTH}  ours {cell(result, args.memory_limit_gb)}", flush=True)

    raw_path.write_text(json.dumps(raw, indent=1, sort_keys=True))
    if on_jax:
        write_jax_results(args.out, raw, args.memory_limit_gb)
    else:
        write_results(args.out, raw, args.memory_limit_gb)


def config_key(kind, batch, length, jit):
    return f"{kind}|B{batch}|{length}|{'xla' if jit else 'graph'}"


def share(result, kind, batch, length, ceiling):
    flops = useful_flops(kind, batch, length)
    if result["status"] != "ok" or not flops or not ceiling:
        return "-"
    return f"{flops / result['seconds'] / 1e9 / ceiling:.0%}"


def write_results(path, raw, limit_gb):
    import keras
    import tensorflow as tf

    from results import update_section

    ceiling = raw.get("matmul_ceiling", {}).get("gflops")
    lines = [
        f"Latest run: {datetime.date.today().isoformat()}, `python bench/layers.py` on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}, Keras {keras.__version__}.",
        "",
        f"Width {WIDTH} ({HEADS} heads of {HEAD_DIM}), float32, `tf.function` without XLA unless the row says XLA. "
        "Each cell: fastest of 5 (T <= 2048), 3 (T = 4096) or 1 (longer) forward+backward steps / peak resident memory above the process's "
        f"baseline, each measured in a fresh process; `over {limit_gb:g} GB` means the watchdog stopped it there "
        "(the machine has 24 GB). Our layers run as users get them (`attention_impl=\"auto\"`: the dense kernel up to 2^27 "
        "score elements, the blocked one above; `LocalWindow` trains on the banded blocked kernel). "
        "Keras's AdditiveAttention has no projections and one head; ours projects Q/K/V.",
        "",
        f"Matmul ceiling measured in this run: {ceiling:.0f} GFLOP/s (2048^3 float32). "
        "\"Share\" = useful matmul FLOPs (4 projections forward and backward, and 6 score-sized matmuls over the keys each "
        "query may see; recomputation not counted) / our time / the ceiling." if ceiling else "",
        "",
        "| layer | B | T | XLA | ours | Keras | ratio (Keras / ours) | ours: share of matmul ceiling |",
        "|---|---:|---:|---|---|---|---|---:|",
    ]
    for kind in PAIRS:
        our_name, their_name = PAIRS[kind]
        for jit in (False, True):
            keys = [config_key(kind, BATCH, t, jit) for t in LENGTHS]
            keys += [config_key(k, b, t, jit) for k, b, t in EXTRA_BATCHES if k == kind]
            for key in keys:
                if key not in raw:
                    continue
                _, batch, length, _ = key.split("|")
                batch, length = int(batch[1:]), int(length)
                ours, theirs = raw[key]["ours"], raw[key]["keras"]
                lines.append(
                    f"| {our_name} vs {their_name} | {batch} | {length} | {'yes' if jit else 'no'} | "
                    f"{cell(ours, limit_gb)} | {cell(theirs, limit_gb)} | {ratio(ours, theirs)} | "
                    f"{share(ours, kind, batch, length, ceiling)} |"
                )
    scores_gb = HEADS * LONG_LENGTH ** 2 * 4 / 2**30
    for kind in WITH_XLA:
        long_run = raw.get(config_key(kind, BATCH, LONG_LENGTH, False), {}).get("ours")
        if long_run is not None:
            lines += [
                "",
                f"{PAIRS[kind][0]} at T={LONG_LENGTH}: {cell(long_run, limit_gb)} "
                f"(share of the matmul ceiling {share(long_run, kind, BATCH, LONG_LENGTH, ceiling)}). "
                f"{PAIRS[kind][1]} materializes the full (B, H, T, T) scores: {scores_gb:.0f} GB for one float32 "
                "score tensor alone, more than this machine has, so it is not run.",
            ]
    print(f"wrote {update_section('Attention layers: forward + backward on the CPU', chr(10).join(lines), path)}")


def write_jax_results(path, raw, limit_gb):
    """The section "Attention layers on JAX" from the raw figures."""
    import jax
    import keras

    from results import update_section

    ceiling = raw.get("matmul_ceiling", {}).get("gflops")
    lines = [
        f"Latest run: {datetime.date.today().isoformat()}, `python bench/layers.py --backend jax` on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores; JAX {jax.__version__}, Keras "
        f"{keras.__version__}. Both sides on Keras's JAX backend, each forward+backward step "
        "compiled by `jax.jit` (XLA), in a fresh process; cells and shares as in the TensorFlow "
        "table above. Our layers as users get them (`attention_impl=\"auto\"` with JAX's own "
        "threshold, `kernels.BLOCKED_MIN_SCORE_ELEMENTS`).",
        "",
        f"Matmul ceiling measured in this run: {ceiling:.0f} GFLOP/s (2048^3 float32, jax.jit)."
        if ceiling else "",
        "",
        "| layer | T | ours | Keras | ratio (Keras / ours) | ours: share of matmul ceiling |",
        "|---|---:|---|---|---|---:|",
    ]
    for kind in WITH_XLA:
        our_name, their_name = PAIRS[kind]
        for length in JAX_LENGTHS:
            key = config_key(kind, BATCH, length, False)
            if key not in raw:
                continue
            ours, theirs = raw[key]["ours"], raw[key]["keras"]
            lines.append(f"| {our_name} vs {their_name} | {length} | {cell(ours, limit_gb)} | "
                         f"{cell(theirs, limit_gb)} | {ratio(ours, theirs)} | "
                         f"{share(ours, kind, BATCH, length, ceiling)} |")
        long_run = raw.get(config_key(kind, BATCH, LONG_LENGTH, False), {}).get("ours")
        if long_run is not None:
            lines.append(f"| {our_name} alone | {LONG_LENGTH} | {cell(long_run, limit_gb)} | "
                         "not run (32 GB of scores) | - | "
                         f"{share(long_run, kind, BATCH, LONG_LENGTH, ceiling)} |")
    print(f"wrote {update_section('Attention layers on JAX: forward + backward on the CPU', chr(10).join(lines), path)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, ours, length, repeats, limit, batch, jit = sys.argv[2:9]
        if kind == "ceiling":
            measure_ceiling()
        else:
            measure_one(kind, bool(int(ours)), int(length), int(repeats), int(limit),
                        int(batch), bool(int(jit)))
    else:
        main()
