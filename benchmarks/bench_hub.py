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

Then construct (construction 11 of every layer, --construct-kinds: attention by default, so that the
rest of post, which the new folder copies, is most of it):

5. compute alone: postsvd.construct on the local folders (C_compute, the second of two runs); the throttle is
   then set so that fetching what construct fetches takes about as long (rate = its bytes / C_compute /
   PARALLEL_FILES: a fetch reads that many files at a time);
6. fetch alone: the selected pairs' tensors of both models, then the rest of post (as construct fetches
   them, on an empty cache; C_fetch, and C_selected of it);
7. overlapped: postsvd.construct by repo id on an empty cache (C_wall: the selection fetched first, the
   rest of post in a thread while the pairs decompose), against max(C_fetch, C_compute) and against
   C_selected + max(C_fetch - C_selected, C_compute), the bound of a design that fetches the selection
   before it decomposes; its folder checked equal, byte for byte, to the local one.

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


def needed_construct(sharded, arch, selected) -> int:
    """Bytes construct 11 of `selected` (indices of the architecture's matrices) fetches: the selected pairs'
    tensors of base, every tensor of post."""
    from postsvd import _core, hub

    base = _core.Checkpoint(sharded["base"])
    names = hub.source_tensors(base, [arch["matrices"][i] for i in selected])
    total = sum(base.info(n)["end"] - base.info(n)["begin"] for n in names)
    post = _core.Checkpoint(sharded["post"])
    return total + sum(post.info(n)["end"] - post.info(n)["begin"] for n in post.tensor_names())


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as f, open(b, "rb") as g:
        return f.read() == g.read()


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
    parser.add_argument("--construct-kinds", default="q,k,v,o", help="the kinds construct selects (steps 5-7)")
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

    # 5. construct: compute alone, on the local folders
    from postsvd import constructions

    kinds = args.construct_kinds.split(",")
    for _ in range(2):  # the second, warm (the first also pays first calls: imports, allocator, page cache)
        started = time.perf_counter()
        postsvd.construct(11, sharded["base"], sharded["post"], os.path.join(root, "construct-local"), kinds=kinds,
                          progress=False, force=True)
        c_compute = time.perf_counter() - started
    arch = postsvd.architecture(sharded["post"])
    selected = sorted(i for batch in _engine.select_batches(arch, every, kinds, None).values() for i in batch)
    c_needed = needed_construct(sharded, arch, selected)
    c_rate = c_needed / c_compute / hub.PARALLEL_FILES  # a fetch reads PARALLEL_FILES files at a time
    ask("rate", c_rate)

    # 6. fetch alone: the selection (both models), then the rest of post
    base, post = fresh_cache("construct-fetch")
    started = time.perf_counter()
    constructions._fetcher(base, post, None, False).fetch(selected)
    c_selected = time.perf_counter() - started
    hub.fetch(post, None)
    c_fetch = time.perf_counter() - started
    c_fetch_sent = ask("sent")

    # 7. overlapped
    fresh_cache("construct-overlap")
    started = time.perf_counter()
    postsvd.construct(11, "org/base", "org/post", os.path.join(root, "construct-hub"), kinds=kinds, progress=False)
    c_wall = time.perf_counter() - started
    c_sent = ask("sent")
    c_same = all(_same_file(os.path.join(root, "construct-local", name), os.path.join(root, "construct-hub", name))
                 for name in os.listdir(os.path.join(root, "construct-local")) if name != constructions.RECORD_NAME)
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
        "",
        f"construct 11, {args.layers} layers, kinds {args.construct_kinds}; throttle {c_rate / 1e6:.1f} MB/s per "
        f"response body",
        "",
        "| measure | value | goal |",
        "|---|---:|---:|",
        f"| construct: bytes sent / bytes needed ({c_needed:,} needed: the selection of both, all of post) "
        f"| {c_sent / c_needed:.4f} | <= 1.05 |",
        f"| fetch alone: bytes sent / bytes needed | {c_fetch_sent / c_needed:.4f} | <= 1.05 |",
        f"| compute alone (construct on the local folders), s | {c_compute:.2f} | |",
        f"| fetch alone (throttled: the selection, then the rest of post), s | {c_fetch:.2f} | |",
        f"| of which the selection, s | {c_selected:.2f} | |",
        f"| fetch then compute (sum), s | {c_fetch + c_compute:.2f} | |",
        f"| construct by repo id, s | {c_wall:.2f} | |",
        f"| construct by repo id / max(fetch, compute) | {c_wall / max(c_fetch, c_compute):.3f} | <= 1.15 |",
        f"| construct by repo id / (selection + max(rest, compute)) | "
        f"{c_wall / (c_selected + max(c_fetch - c_selected, c_compute)):.3f} | |",
        "",
        f"Files of the construction by repo id equal to the local one's, byte for byte: {c_same}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
