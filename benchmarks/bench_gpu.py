"""Baselines for benchmarks/bench_gpu.cu on the same GPU: a loop of torch.linalg.svd (each CUDA driver)
and cupy.linalg.svd over one layer's 7 matrix pairs (the bf16 weights that
`postsvd_bench_gpu --save DIR` wrote, HF layout [out, in]), each followed by
the same measures on the device (scaling, Q1, Q2, I_orth, NF, iorth diagonal,
sim_U, sim_V, difference); sigma, the diagonal and NF come back to the host,
as in postsvd. Seconds per model pair are extrapolated as layer time x layers
and labelled so. Accuracy on the base matrices: relative reconstruction error,
max |U^T U - I|, max |V^T V - I| (float64 on the device) and the largest relative
sigma error against LAPACK float64 (DIR/<kind>_sigma_ref.npy) over sigma >= 1e-3 sigma_max.
Only the 4 distinct shapes are timed (q, k, gate, down); o, v and up repeat them.

  python benchmarks/bench_gpu.py --data DIR --model Qwen2.5-7B --layers 28 \
      [--drivers gesvd,gesvdj,gesvda] [--cupy] [--budget 120] [--json out.json]
"""
import argparse
import json
import os
import time

import numpy as np
import torch

KINDS = ["q", "k", "v", "o", "gate", "up", "down"]
#: o has q's shape, v has k's, up has gate's: one layer = 2 q + 2 k + 2 gate + 1 down (measured shapes only).
TIMED = {"q": 2, "k": 2, "gate": 2, "down": 1}


def load_bf16(path):
    """HF [out, in] bf16 (stored as uint16) -> host torch bfloat16 tensor."""
    return torch.from_numpy(np.load(path).view(np.int16)).view(torch.bfloat16)


def measures(ua, sa, va, ub, sb, vb, xp):
    """The measures of one pair from reduced SVDs in paper orientation (V = right vectors, [n, k])."""
    k = sa.shape[0]
    q1 = ua.T @ ub
    q2 = va.T @ vb
    iorth = q1.T @ q2
    eye = xp.eye(k, dtype=iorth.dtype, device=iorth.device) if xp is torch else xp.eye(k, dtype=iorth.dtype)
    nf = xp.linalg.norm(iorth - eye) / k
    sim_u = abs(q1)
    sim_v = abs(q2)
    difference = abs(sim_u - sim_v)
    scaling = sb / sa
    return scaling, iorth.diagonal(), nf, difference


def torch_svd(driver):
    def svd(w):
        u, s, vh = torch.linalg.svd(w, full_matrices=False, driver=driver)
        return u, s, vh.T
    return svd


def run_torch_pair(hf_base, hf_post, svd):
    wa = hf_base.cuda(non_blocking=False).float().T  # paper orientation [in, out]
    wb = hf_post.cuda().float().T
    ua, sa, va = svd(wa)
    ub, sb, vb = svd(wb)
    scaling, diag, nf, _ = measures(ua, sa, va, ub, sb, vb, torch)
    out = (sa.cpu(), sb.cpu(), diag.cpu(), float(nf))
    return out, (ua, sa, va)


def run_cupy_pair(hf_base, hf_post, cp):
    def to_cupy(t):
        return cp.asarray(t.cuda().float().T.contiguous())
    wa, wb = to_cupy(hf_base), to_cupy(hf_post)
    ua, sa, vha = cp.linalg.svd(wa, full_matrices=False)
    ub, sb, vhb = cp.linalg.svd(wb, full_matrices=False)
    va, vb = vha.T, vhb.T
    scaling, diag, nf, _ = measures(ua, sa, va, ub, sb, vb, cp)
    out = (cp.asnumpy(sa), cp.asnumpy(sb), cp.asnumpy(diag), float(nf))
    return out, (torch.as_tensor(ua, device="cuda"), torch.as_tensor(sa, device="cuda"), torch.as_tensor(va, device="cuda"))


def accuracy(hf_base, factors, sigma_ref):
    u, s, v = (x.double() for x in factors)
    w = hf_base.cuda().double().T
    recon = float(torch.linalg.norm(w - (u * s) @ v.T) / torch.linalg.norm(w))
    k = s.shape[0]
    eye = torch.eye(k, dtype=torch.float64, device="cuda")
    orth_u = float((u.T @ u - eye).abs().max())
    orth_v = float((v.T @ v - eye).abs().max())
    sigma_rel = float("nan")
    if sigma_ref is not None:
        ref = torch.from_numpy(sigma_ref).cuda()
        keep = ref >= 1e-3 * ref[0]
        sigma_rel = float(((s - ref).abs() / ref)[keep].max())
    return {"reconstruction": recon, "orth_u": orth_u, "orth_v": orth_v, "sigma_rel": sigma_rel}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--drivers", default="gesvd,gesvdj,gesvda")
    parser.add_argument("--cupy", action="store_true")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per baseline before it stops (reported as partial)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    host = {(kind, role): load_bf16(os.path.join(args.data, f"{kind}_{role}.npy")) for kind in KINDS for role in ("base", "post")}
    refs = {}
    for kind in KINDS:
        path = os.path.join(args.data, f"{kind}_sigma_ref.npy")
        refs[kind] = np.load(path) if os.path.exists(path) else None

    baselines = [(f"torch.linalg.svd driver={d}", "torch", d) for d in args.drivers.split(",") if d]
    if args.cupy:
        try:
            import cupy as cp  # noqa: F401
            baselines.append(("cupy.linalg.svd", "cupy", None))
        except ImportError as e:
            print(f"cupy not available: {e}")
    device = torch.cuda.get_device_name(0)
    print(f"device: {device}; torch {torch.__version__}; model {args.model}, {args.layers} layers")
    results = {"model": args.model, "layers": args.layers, "device": device, "torch": torch.__version__, "baselines": []}
    for label, lib, driver in baselines:
        if lib == "cupy":
            import cupy as cp
            run = lambda a, b: run_cupy_pair(a, b, cp)  # noqa: E731
        else:
            svd = torch_svd(driver)
            run = lambda a, b: run_torch_pair(a, b, svd)  # noqa: E731
        # Warm-up on a small pair (library load, handles).
        run(host[("k", "base")][:64, :96], host[("k", "post")][:64, :96])
        torch.cuda.synchronize()
        per_kind, acc, spent, partial = {}, {}, 0.0, False
        for kind in TIMED:
            if spent > args.budget:
                partial = True
                print(f"{label}: {kind} skipped (budget {args.budget:.0f} s spent)")
                continue
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            _, factors = run(host[(kind, "base")], host[(kind, "post")])
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            spent += seconds
            per_kind[kind] = seconds
            acc[kind] = accuracy(host[(kind, "base")], factors, refs[kind])
            del factors
            torch.cuda.empty_cache()
            print(f"{label:32s} {kind:4s} pair {seconds:8.3f} s  recon {acc[kind]['reconstruction']:.2e}  "
                  f"orth U {acc[kind]['orth_u']:.2e}  orth V {acc[kind]['orth_v']:.2e}  sigma rel {acc[kind]['sigma_rel']:.2e}",
                  flush=True)
        layer = sum(TIMED[kind] * seconds for kind, seconds in per_kind.items())
        entry = {"baseline": label, "per_kind_seconds": per_kind, "accuracy": acc, "partial": partial,
                 "layer_seconds": None if partial else layer,
                 "model_seconds_extrapolated": None if partial else layer * args.layers}
        if not partial:
            print(f"{label}: one layer {layer:.2f} s (2 q + 2 k + 2 gate + 1 down) -> model pair "
                  f"{layer * args.layers:.1f} s (extrapolated x{args.layers} layers)")
        results["baselines"].append(entry)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
