"""The paper's weight measures on the family, in numpy float64 (independent of the compiled core).

For every layer and projection kind, with A = base and B = instruct, reasoning,
instruct_lora (the adapter merged: W + (lora_alpha / r) B A) or base_alt, in the
paper's orientation W = W_hf^T ([in, out]):
U S V^T = W, Q1 = U_A^T U_B, Q2 = V_A^T V_B, I_orth = Q1^T Q2,
NF = ||I_orth - I||_F / k, the scaling factors sigma_B / sigma_A over the
top 90 % of indices (j < ceil(0.9 k)): mean and population std, per matrix and
pooled per kind; and the intruder dimensions of Shuttleworth et al. 2024
(Algorithm 1): of the top 10 output-side singular vectors of B (the left ones
of W_hf), those whose largest |cosine| with every one of A's is below 0.5.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

import numpy as np

KIND_TENSORS = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
#: The post models of base: full fine-tuning (instruct, reasoning) and a LoRA adapter (instruct_lora).
POSTS = ("instruct", "reasoning", "instruct_lora")
COMPARED = POSTS + ("base_alt",)
#: Algorithm 1's settings (postsvd's defaults): the top INTRUDER_K post vectors, |cosine| below INTRUDER_EPSILON.
INTRUDER_K = 10
INTRUDER_EPSILON = 0.5
#: adapter_config.json options that change the merge; this plain-LoRA reference refuses them.
_MERGE_OPTIONS = ("use_dora", "use_rslora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "modules_to_save",
                  "target_parameters")


def _projection(name: str, ending: str):
    """(layer, kind) of a tensor name that ends with a projection's module and `ending`, else None."""
    for kind, suffix in KIND_TENSORS.items():
        if name.endswith(suffix + ending):
            return int(name.split(".layers.")[1].split(".")[0]), kind
    return None


def load_matrices(model_dir) -> Dict[tuple, np.ndarray]:
    """{(layer, kind): W in paper orientation, float64} of a LLaMA folder's model.safetensors."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(model_dir) / "model.safetensors"))
    found = {}
    for name, tensor in tensors.items():
        key = _projection(name, ".weight")
        if key is not None:
            found[key] = tensor.float().numpy().astype(np.float64).T
    if not found:
        raise ValueError(f"{model_dir}: no attention/MLP projection tensors found in model.safetensors")
    return found


def load_adapter_matrices(adapter_dir, base: Dict[tuple, np.ndarray]) -> Dict[tuple, np.ndarray]:
    """{(layer, kind): W + delta W in paper orientation, float64} of a PEFT LoRA adapter folder applied to
    `base` (load_matrices of its base): delta W_hf = (lora_alpha / r) B A for each lora_A / lora_B pair of
    adapter_model.safetensors; the matrices it does not adapt are base's."""
    from safetensors.torch import load_file

    folder = Path(adapter_dir)
    config = json.loads((folder / "adapter_config.json").read_text())
    for option in _MERGE_OPTIONS:
        if config.get(option):
            raise ValueError(f"{folder / 'adapter_config.json'}: {option} is set; this reference forms plain LoRA "
                             f"merges only")
    scaling = config["lora_alpha"] / config["r"]
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    merged = dict(base)
    for name, a in tensors.items():
        key = _projection(name, ".lora_A.weight")
        if key is None:
            if not name.endswith(".lora_B.weight"):
                raise ValueError(f"{folder / 'adapter_model.safetensors'}: {name} is not a projection's lora_A or "
                                 f"lora_B")
            continue
        b = tensors[name[: -len("lora_A.weight")] + "lora_B.weight"]
        delta = scaling * (b.double().numpy() @ a.double().numpy())  # [out, in], as peft merges it
        merged[key] = base[key] + delta.T
    return merged


def post_matrices(root, name: str, base: Dict[tuple, np.ndarray]) -> Dict[tuple, np.ndarray]:
    """The matrices of the family's folder `name`: a model's, or an adapter's merged into `base`."""
    folder = Path(root) / name
    if (folder / "adapter_config.json").is_file():
        return load_adapter_matrices(folder, base)
    return load_matrices(folder)




def pair_measures(w_a: np.ndarray, w_b: np.ndarray) -> Dict[str, float]:
    """NF, top-90 % scaling statistics and intruder dimensions (k 10, epsilon 0.5) of one pair of [in, out]
    matrices."""
    if w_a.shape != w_b.shape:
        raise ValueError(f"expected equal shapes, got {list(w_a.shape)} and {list(w_b.shape)}")
    u_a, s_a, vt_a = np.linalg.svd(w_a, full_matrices=False)
    u_b, s_b, vt_b = np.linalg.svd(w_b, full_matrices=False)
    k = s_a.size
    q1 = u_a.T @ u_b
    q2 = vt_a @ vt_b.T
    i_orth = q1.T @ q2
    top = math.ceil(0.9 * k)
    ratios = s_b[:top] / s_a[:top]
    # output side: the rows of vt are the left singular vectors of the stored W_hf = W^T
    cosines = np.abs(vt_b[:INTRUDER_K] @ vt_a.T).max(axis=1)
    return {
        "nf": float(np.linalg.norm(i_orth - np.eye(k)) / k),
        "scaling_mean": float(ratios.mean()),
        "scaling_std": float(ratios.std()),
        "intruders": int(np.sum(cosines < INTRUDER_EPSILON)),
        "ratios": ratios,
    }


def family_measures(root) -> Dict:
    """Measures of the post models and base_alt against base, whether NF(post) < NF(base_alt) everywhere, and
    the intruder dimensions per kind (summed over the layers)."""
    root = Path(root)
    base = load_matrices(root / "base")
    per_pair: Dict[str, List[Dict]] = {}
    pooled: Dict[str, Dict[str, Dict[str, float]]] = {}
    for other in COMPARED:
        mats = post_matrices(root, other, base)
        rows, by_kind = [], {}
        for key in sorted(base, key=lambda lk: (lk[0], list(KIND_TENSORS).index(lk[1]))):
            m = pair_measures(base[key], mats[key])
            by_kind.setdefault(key[1], []).append(m.pop("ratios"))
            rows.append({"layer": key[0], "kind": key[1], **{k: round(v, 6) for k, v in m.items()}})
        per_pair[other] = rows
        pooled[other] = {
            kind: {"mean": round(float(np.concatenate(r).mean()), 6), "std": round(float(np.concatenate(r).std()), 6)}
            for kind, r in by_kind.items()
        }
    alt_nf = {(r["layer"], r["kind"]): r["nf"] for r in per_pair["base_alt"]}
    below = {
        post: all(r["nf"] < alt_nf[(r["layer"], r["kind"])] for r in per_pair[post])
        for post in POSTS
    }
    worst_margin = {
        post: round(max(r["nf"] / alt_nf[(r["layer"], r["kind"])] for r in per_pair[post]), 6)
        for post in POSTS
    }
    intruders = {
        other: {kind: sum(r["intruders"] for r in per_pair[other] if r["kind"] == kind) for kind in KIND_TENSORS}
        for other in COMPARED
    }
    return {
        "per_matrix": per_pair,
        "pooled_scaling": pooled,
        "nf_post_below_base_alt_everywhere": below,
        "max_nf_ratio_post_over_base_alt": worst_margin,
        "intruders": {"k": INTRUDER_K, "epsilon": INTRUDER_EPSILON, "side": "output", "by_kind": intruders},
    }


def nf_table(measures: Dict) -> str:
    """Markdown table: NF per kind (min..max over layers) for each compared model."""
    kinds = list(KIND_TENSORS)
    lines = ["| vs base | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for other in COMPARED:
        cells = []
        for kind in kinds:
            values = [r["nf"] for r in measures["per_matrix"][other] if r["kind"] == kind]
            cells.append(f"{min(values):.4f}..{max(values):.4f}")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling_table(measures: Dict) -> str:
    """Markdown table: pooled top-90 % scaling mean +- std per kind."""
    kinds = list(KIND_TENSORS)
    lines = ["| vs base | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for other in COMPARED:
        cells = [
            f"{measures['pooled_scaling'][other][k]['mean']:.4f} +- {measures['pooled_scaling'][other][k]['std']:.4f}"
            for k in kinds
        ]
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def intruder_table(measures: Dict) -> str:
    """Markdown table: intruder dimensions per kind (summed over the layers) and in all, per compared model."""
    kinds = list(KIND_TENSORS)
    by_kind = measures["intruders"]["by_kind"]
    lines = ["| vs base | " + " | ".join(kinds) + " | all |", "|---|" + "---|" * (len(kinds) + 1)]
    for other in COMPARED:
        counts = [by_kind[other][kind] for kind in kinds]
        lines.append(f"| {other} | " + " | ".join(str(c) for c in counts) + f" | {sum(counts)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m postsvd_family.check", description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default="examples/models")
    parser.add_argument("--json", action="store_true", help="print every number as JSON")
    args = parser.parse_args(argv)
    measures = family_measures(args.root)
    if args.json:
        print(json.dumps(measures, indent=2))
        return 0
    print("NF (min..max over layers):\n" + nf_table(measures))
    print("\nPooled top-90 % scaling factors (mean +- std):\n" + scaling_table(measures))
    print(f"\nIntruder dimensions (top {INTRUDER_K} output-side vectors, |cosine| < {INTRUDER_EPSILON}), summed over "
          f"the layers:\n" + intruder_table(measures))
    print("\nNF(post) < NF(base_alt) in every layer and kind:", measures["nf_post_below_base_alt_everywhere"])
    print("largest NF(post) / NF(base_alt):", measures["max_nf_ratio_post_over_base_alt"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
