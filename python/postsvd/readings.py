"""How postsvd reads its measures in words: the one home of every threshold and phrase.

The summary (:meth:`postsvd.Comparison.summary`), the tables (the ``reading`` column of
:meth:`~postsvd.Comparison.kind_table`) and the HTML report all read a comparison through the
functions here, so a threshold or a wording changes in one place.

* Scaling: the pooled top-90 % scaling factors of a kind, mean ± std. Their coefficient of
  variation below :data:`UNIFORM_SCALING_CV` is *near-uniform* scaling (one factor for all);
  a mean within :data:`UNCHANGED_SCALING` of 1 as well is *unchanged*.
* Rotation: NF against the NF of two unrelated random rotations of the same size,
  :func:`random_rotation_nf` = sqrt(2/k). Below :data:`CONSISTENT_NF_RATIO` of it the input and
  output singular vectors rotated together (*consistent rotation*, the paper's finding for
  post-training); below :data:`PARTIAL_NF_RATIO`, *partly consistent*; above, *no consistent
  rotation* (what independently trained models show).
* Intruder dimensions (Shuttleworth et al. 2024): top post singular vectors nearly orthogonal to
  every base one; :func:`intruder_reading` says per kind how many and in how many matrices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Tuple

#: NF / random_rotation_nf(k) below this: the two sides rotate together.
CONSISTENT_NF_RATIO = 0.25
#: NF / random_rotation_nf(k) below this (and above CONSISTENT_NF_RATIO): partly together.
PARTIAL_NF_RATIO = 0.6
#: std / |mean| of the pooled scaling factors below this: near-uniform scaling.
UNIFORM_SCALING_CV = 0.05
#: |mean - 1| below this (with near-uniform scaling): the singular values did not change.
UNCHANGED_SCALING = 0.005

#: The rotation readings, from the closest to the paper's finding to the farthest.
ROTATIONS = ("consistent rotation", "partly consistent rotation", "no consistent rotation")
#: The scaling readings (the near-uniform one carries its factor: "near-uniform scaling x0.95").
SCALINGS = ("unchanged singular values", "near-uniform scaling", "non-uniform scaling")

#: What a reader is told where NF alone would tempt them to judge lineage (one wording, here).
LINEAGE_HINT = ("NF alone does not settle lineage (a rotated or permuted copy reads the same): `postsvd lineage "
                "BASE POST` tests whether POST derives from BASE, with a p-value.")


def random_rotation_nf(k: int) -> float:
    """Expected NF of two unrelated random rotations of size k: sqrt(2 / k).

    For a random orthogonal R, ||R - I||_F^2 = 2k - 2 tr(R) ~ 2k, so NF ~ sqrt(2k) / k.
    """
    return math.sqrt(2.0 / k)


def nf_ratio(nf: float, nf_random: float) -> float:
    """NF as a fraction of the unrelated-rotation value (inf where that value is 0)."""
    return nf / nf_random if nf_random > 0 else float("inf")


def rotation_reading(nf: float, nf_random: float) -> str:
    """One of :data:`ROTATIONS` for an NF and its unrelated-rotation value."""
    ratio = nf_ratio(nf, nf_random)
    if ratio < CONSISTENT_NF_RATIO:
        return ROTATIONS[0]
    if ratio < PARTIAL_NF_RATIO:
        return ROTATIONS[1]
    return ROTATIONS[2]


def scaling_reading(mean: float, std: float) -> str:
    """The scaling reading of pooled factors with this mean and std ("near-uniform scaling x0.95", ...)."""
    cv = std / abs(mean) if mean else float("inf")
    if cv < UNIFORM_SCALING_CV and abs(mean - 1.0) < UNCHANGED_SCALING:
        return SCALINGS[0]
    if cv < UNIFORM_SCALING_CV:
        return f"{SCALINGS[1]} x{mean:.3g}"
    return SCALINGS[2]


@dataclass(frozen=True)
class KindReading:
    """The reading of one kind: its scaling and rotation readings, and both as one phrase."""
    scaling: str
    rotation: str

    @property
    def text(self) -> str:
        return f"{self.scaling} + {self.rotation}"

    @property
    def uniform(self) -> bool:
        return not self.scaling.startswith(SCALINGS[2])


def kind_reading(scaling_mean: float, scaling_std: float, nf_mean: float, nf_random: float) -> KindReading:
    """The reading of a kind from its pooled scaling and its mean NF (a row of the kind table)."""
    return KindReading(scaling_reading(scaling_mean, scaling_std), rotation_reading(nf_mean, nf_random))


def overall_reading(readings: Iterable[KindReading]) -> str:
    """One sentence over every compared kind (the summary's "Overall:" line and the report's verdict)."""
    items = list(readings)
    consistent = all(r.rotation == ROTATIONS[0] for r in items)
    if consistent and all(r.uniform for r in items):
        return ("post-training looks like near-uniform scaling of the singular values plus one consistent rotation "
                "of the input and output sides (the paper's finding).")
    if consistent:
        return "the two sides rotate together (small NF), but the scaling is not uniform."
    if any(r.rotation == ROTATIONS[2] for r in items):
        return ("the singular vectors do not rotate consistently (NF near the value for unrelated models); "
                + LINEAGE_HINT)
    return "partly consistent rotations; see nf.png and the per-layer table."


def nf_comparison(nf: float, nf_random: float) -> str:
    """NF against the unrelated-rotation value in words, for a page: "0.04× the value for unrelated models"."""
    ratio = nf_ratio(nf, nf_random)
    if not math.isfinite(ratio):
        return "not comparable with the value for unrelated models"
    if ratio < 0.01:
        return "below 1 % of the value for unrelated models"
    return f"{ratio:.2f}× the value for unrelated models"


def intruder_setting(k: int, epsilon: float, side: str) -> str:
    """What the intruder count counted, in words: "top 10 output-side singular vectors with |cos| < 0.5 to
    every base one"."""
    return f"top {k} {side}-side singular vectors with |cos| < {epsilon:g} to every base one"


def intruder_reading(per_kind: Sequence[Tuple[str, int, int, int]], k: int, epsilon: float,
                     side: str) -> Optional[str]:
    """The summary's line on intruder dimensions (Shuttleworth et al. 2024), or None when there are none.

    Args:
        per_kind: (kind, intruders in total, matrices with at least one, matrices compared) per kind.
    """
    found = [(kind, total, hit, count) for kind, total, hit, count in per_kind if total > 0]
    if not found:
        return None
    parts = [f"{kind} {total} in {hit} of {count} matrices" for kind, total, hit, count in found]
    clean = [kind for kind, total, _, _ in per_kind if total == 0]
    if clean:
        parts.append(f"none in {', '.join(clean)}")
    return (f"Intruder dimensions ({intruder_setting(k, epsilon, side)}; Shuttleworth et al. 2024): "
            + "; ".join(parts) + ". These are new high-ranking directions the base lacks; the paper finds that "
            "LoRA brings them in and full fine-tuning mostly does not (see intruders.png).")
