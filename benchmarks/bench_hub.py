"""Hub fetch: bytes fetched against bytes needed, and fetching overlapped with decomposing (issue 21 item 7).

    python benchmarks/bench_hub.py [--layers 8] [--hidden 768] [--intermediate 2048] [--out FILE]
                                   [--wait-load 1.5 --max-wait 3600]

Writes a bf16 base and post (Gaussian weights, post = base + 1 % noise; llama shapes given by the
options), re-saves each as one shard per layer and serves both from the Hub stand-in of the tests
(tests/python/hub_server.py) in a child process on 127.0.0.1, throttled per response body. In one run:

1. one layer: postsvd.compare("org/base", "org/post", layers=[middle]) on an empty cache (the models
   resolved first, so config, index and headers are aside); bytes the server sent of the shards against
   the bytes of the tensors the layer's pairs read (both models);
2. compute alone: the same comparison of every layer on the local folders (T_compute); the throttle is
   then set so that fetching every layer takes about as long (rate = bytes needed / T_compute);
3. fetch alone: every layer's tensors fetched unit by unit as a run fetches them (_engine.Fetcher, on an
   empty cache; T_fetch), and the bytes sent against the bytes needed;
4. overlapped: postsvd.compare of every layer by repo id on an empty cache (T_wall), against
   max(T_fetch, T_compute); its table checked equal to the local one.

Prints (and with --out writes) a Markdown block for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))  # hub_server.py: the Hub stand-in


def write_pair(root: str, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int):
    """base: Gaussian weights (llama shapes); post = base + 1 % noise; bf16, one file each. The decomposition's
    time barely depends on the spectrum, and these are written in seconds."""
    import numpy as np

    from postsvd import synthetic

    rng = np.random.default_rng(0)
    vocab = 256
    shapes = synthetic._projection_shapes(hidden, intermediate, heads, kv_heads)
    base = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden), dtype=np.float32) * 0.02,
            "model.norm.weight": np.ones(hidden, np.float32),
            "lm_head.weight": rng.standard_normal((vocab, hidden), dtype=np.float32) * 0.02}
    for layer in range(layers):
        base[f"model.layers.{layer}.input_layernorm.weight"] = np.ones(hidden, np.float32)
        base[f"model.layers.{layer}.post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
        for kind, (out_features, in_features) in shapes.items():
            base[synthetic._tensor_name(layer, kind)] = rng.standard_normal((out_features, in_features),
                                                                            dtype=np.float32) * 0.02
    post = {name: t + 0.01 * np.std(t) * rng.standard_normal(t.shape, dtype=np.float32) if t.ndim == 2 else t
            for name, t in base.items()}
    config = synthetic._config("llama", layers, hidden, intermediate, heads, kv_heads, vocab, "bfloat16")
    folders = {name: os.path.join(root, name) for name in ("base", "post")}
    synthetic._save(base, folders["base"], config, "bfloat16", 1)
    synthetic._save(post, folders["post"], config, "bfloat16", 1)
    return folders


def serve(files, conn) -> None:
    """The child process: the Hub stand-in with org/base and org/post; answers (command, arg) on `conn`."""
    from hub_server import FakeHub

    server = FakeHub()
    for repo, content in files.items():
        server.add_repo(repo, content)
    server.start()
    conn.send(server.endpoint)
    while True:
        command, arg = conn.recv()
        if command == "stop":
            server.stop()
            conn.send(None)
            return
        if command == "rate":
            server.rate = arg
        elif command == "reset":
            server.reset()
        conn.send(sum(r["sent"] for r in server.requests() if r["path"].endswith(".safetensors")))


def wait_for_quiet(load: float, max_wait: float) -> None:
    """Returns once the 1-minute load average was under `load` at two checks 30 s apart; exits after `max_wait` s."""
    deadline = time.monotonic() + max_wait
    quiet = 0
    while quiet < 2:
        if time.monotonic() > deadline:
            sys.exit(f"bench_hub: the load average stayed over {load} for {max_wait:.0f} s; not measured")
        quiet = quiet + 1 if os.getloadavg()[0] < load else 0
        if quiet < 2:
            time.sleep(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--out", default=None, help="also write the Markdown block to this file")
    parser.add_argument("--wait-load", type=float, default=None, metavar="L",
                        help="first wait until the 1-minute load average stays under L for 30 s (a shared machine)")
    parser.add_argument("--max-wait", type=float, default=3600, metavar="S", help="give up waiting after S seconds")
    args = parser.parse_args()
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, args.max_wait)

    root = tempfile.mkdtemp(prefix="postsvd-bench-hub-")
    home = os.path.join(root, "hf-home")
    os.environ.update({"HF_HOME": home, "HF_HUB_CACHE": os.path.join(home, "hub"), "HF_HUB_OFFLINE": "0",
                       "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"})
    load_start = os.getloadavg()[0]
    from hub_server import shard_model

    import postsvd
    folders = write_pair(root, args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads)
    sharded = {name: os.path.join(root, name + "-sharded") for name in folders}
    files = {f"org/{name}": shard_model(folders[name], sharded[name]) for name in folders}

    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(files, child), daemon=True)
    process.start()
    endpoint = parent.recv()
    os.environ["HF_ENDPOINT"] = endpoint
    from huggingface_hub import constants  # it reads HF_ENDPOINT once, at import: set what it read

    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"

    def ask(command, arg=None):
        parent.send((command, arg))
        return parent.recv()

    from postsvd import _engine, hub

    def needed(layers) -> int:
        total = 0
        for name in ("base", "post"):
            arch = postsvd.architecture(sharded[name])
            sources = [s for s in arch["matrices"] if s["layer"] in layers]
            checkpoint = postsvd._core.Checkpoint(sharded[name])
            total += sum(checkpoint.info(n)["end"] - checkpoint.info(n)["begin"]
                         for n in hub.source_tensors(checkpoint, sources))
        return total

    def fresh_cache(name: str):
        os.environ["POSTSVD_HUB_CACHE"] = os.path.join(root, "postsvd-" + name)
        models = [hub.resolve("org/base"), hub.resolve("org/post")]
        ask("reset")
        return models

    every = list(range(args.layers))
    middle = args.layers // 2

    # 1. one layer, unthrottled
    fresh_cache("one")
    postsvd.compare("org/base", "org/post", layers=[middle], progress=False)
    one_sent, one_needed = ask("sent"), needed([middle])

    # 2. compute alone, on the local folders
    started = time.perf_counter()
    local = postsvd.compare(sharded["base"], sharded["post"], progress=False)
    t_compute = time.perf_counter() - started
    all_needed = needed(every)
    rate = all_needed / t_compute
    ask("rate", rate)

    # 3. fetch alone, unit by unit as a run fetches
    base, post = fresh_cache("fetch")
    run = _engine.open_run(base, post)
    started = time.perf_counter()
    for _, indices in run.local_units():
        run.fetcher.fetch(indices)
    t_fetch = time.perf_counter() - started
    all_sent = ask("sent")

    # 4. overlapped
    fresh_cache("overlap")
    started = time.perf_counter()
    remote = postsvd.compare("org/base", "org/post", progress=False)
    t_wall = time.perf_counter() - started
    overlap_sent = ask("sent")
    same = remote.table.equals(local.table)
    ask("stop")
    process.join()
    load_end = os.getloadavg()[0]

    bound = max(t_fetch, t_compute)
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}), no GPU; load average {load_start:.2f} at the start, {load_end:.2f} at the end",
        f"- {postsvd.build_info()}",
        f"- input: {args.layers} llama layers (hidden {args.hidden}, intermediate {args.intermediate}, {args.heads} "
        f"heads, {args.kv_heads} KV heads), bf16, one shard per layer per model; float32; "
        f"{_engine.FETCH_AHEAD} units fetched ahead; throttle {rate / 1e6:.1f} MB/s per response body",
        "",
        "| measure | value | goal |",
        "|---|---:|---:|",
        f"| one layer: bytes sent / bytes needed ({one_needed:,} needed) | {one_sent / one_needed:.4f} | <= 1.05 |",
        f"| {args.layers} layers: bytes sent / bytes needed ({all_needed:,} needed) | {all_sent / all_needed:.4f} "
        f"| <= 1.05 |",
        f"| {args.layers} layers, overlapped run: bytes sent / bytes needed | {overlap_sent / all_needed:.4f} "
        f"| <= 1.05 |",
        f"| compute alone (local folders), s | {t_compute:.2f} | |",
        f"| fetch alone (throttled, unit by unit), s | {t_fetch:.2f} | |",
        f"| fetch then compute (sum), s | {t_fetch + t_compute:.2f} | |",
        f"| overlapped run by repo id, s | {t_wall:.2f} | |",
        f"| overlapped / max(fetch, compute) | {t_wall / bound:.3f} | <= 1.15 |",
        "",
        f"Tables of the overlapped run equal to the local run's: {same}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
