"""The CUDA backend through postsvd's Python API, beyond test_gpu.py: every measure of a pair against the
CPU backend in float32 and float64, bf16-exact inputs, the memory budget, and several device ids.
Run with `pytest -m gpu` on a machine with a GPU and a POSTSVD_ENABLE_CUDA=ON build; skipped otherwise."""
import numpy as np
import pytest

import postsvd
from postsvd import _core
from helpers import requires_cuda

pytestmark = [pytest.mark.gpu, requires_cuda]

TOL = {"float32": 1e-4, "float64": 1e-9}


def separated_pair(rows, cols, rng):
    """base = U S V^T with well separated sigma; post turns U, V a little and scales S."""
    k = min(rows, cols)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    s = 1.0 + 0.5 * np.arange(k, 0, -1)
    u2, _ = np.linalg.qr(u + 0.05 * rng.standard_normal((rows, k)) / np.sqrt(rows))
    v2, _ = np.linalg.qr(v + 0.05 * rng.standard_normal((cols, k)) / np.sqrt(cols))
    base = (u * s) @ v.T
    post = (u2 * (1.1 * s)) @ v2.T
    # bf16-exact values: both backends see the same numbers in either precision.
    as_bf16 = lambda x: (x.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # noqa: E731
    return as_bf16(base), as_bf16(post)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(72, 40), (36, 88), (48, 48)])
def test_every_measure_matches_cpu(rng, dtype, shape):
    base, post = separated_pair(*shape, rng)
    cpu = postsvd.pair_measures(base, post, dtype=dtype, device="cpu", full_matrices=True)
    gpu = postsvd.pair_measures(base, post, dtype=dtype, device="cuda", full_matrices=True)
    tol = TOL[dtype]
    scale = max(cpu["sigma_base"][0], cpu["sigma_post"][0])
    for key in ("sigma_base", "sigma_post"):
        np.testing.assert_allclose(gpu[key], cpu[key], atol=tol * scale, rtol=0, err_msg=key)
    for key in ("scaling", "scaling_mean", "scaling_std", "nf", "iorth_diag", "sim_u", "sim_v", "difference", "q1", "q2",
                "iorth"):
        np.testing.assert_allclose(gpu[key], cpu[key], atol=tol, rtol=0, err_msg=key)


def test_leading_k_blocks_match_cpu(rng):
    base, post = separated_pair(64, 40, rng)
    cpu = postsvd.pair_measures(base, post, device="cpu", full_matrices=True, leading_k=12)
    gpu = postsvd.pair_measures(base, post, device="cuda", full_matrices=True, leading_k=12)
    for key in ("q1", "q2", "iorth", "sim_u", "sim_v"):
        assert gpu[key].shape == (12, 12), key
        np.testing.assert_allclose(gpu[key], cpu[key], atol=1e-4, rtol=0, err_msg=key)


def test_memory_budget_too_small_is_a_backend_error(rng):
    base, post = separated_pair(64, 32, rng)
    backend = _core.Backend("cuda", [], 4096, 0)
    with pytest.raises(postsvd.BackendError, match="budget"):
        backend.measures(base, post, "float32", False, 0)


def test_repeated_device_ids_give_the_same_measures(rng):
    base, post = separated_pair(80, 56, rng)
    one = _core.Backend("cuda", [0], 0, 0).measures(base, post, "float32", True, 0)
    two = _core.Backend("cuda", [0, 0], 0, 0).measures(base, post, "float32", True, 0)
    for key in ("sigma_base", "nf", "iorth_diag", "q1"):
        np.testing.assert_allclose(two[key], one[key], atol=1e-12, rtol=0, err_msg=key)
