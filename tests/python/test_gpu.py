"""CUDA backend through the Python API: the same measures as the CPU backend (run with `pytest -m gpu`
on a machine with a GPU and a POSTSVD_ENABLE_CUDA=ON build; skipped otherwise)."""
import numpy as np
import pytest

import postsvd
import reference
from helpers import requires_cuda

pytestmark = [pytest.mark.gpu, requires_cuda]


@pytest.mark.parametrize("dtype, tol", [("float32", 2e-5), ("float64", 1e-12)])
def test_cuda_svd_matches_reference(rng, dtype, tol):
    w = reference.well_conditioned(96, 64, rng)
    u, s, v = postsvd.svd(w, dtype=dtype, device="cuda")
    ru, rs, rv = reference.svd(w)
    np.testing.assert_allclose(s, rs, atol=10 * tol)
    np.testing.assert_allclose(u @ np.diag(s) @ v.T, w, atol=50 * tol)
    np.testing.assert_allclose(u @ u.T, ru @ ru.T, atol=50 * tol)  # projectors, not raw vectors
    rows = np.argmax(np.abs(u), axis=0)
    assert np.all(u[rows, np.arange(u.shape[1])] > 0)


def test_cuda_compare_matches_cpu(related_pair, unrelated_pair):
    for pair in (related_pair, unrelated_pair):
        cpu = postsvd.compare(pair.base, pair.post, progress=False).table
        gpu = postsvd.compare(pair.base, pair.post, device="cuda", progress=False).table
        for column in ("scaling_mean", "scaling_std", "nf", "sigma_base_max", "iorth_diag_mean"):
            np.testing.assert_allclose(gpu[column], cpu[column], atol=2e-4, err_msg=column)


def test_cuda_matrices_match_cpu(unrelated_pair):
    cpu = postsvd.compare(unrelated_pair.base, unrelated_pair.post, layers=[0], kinds="q", progress=False)
    gpu = postsvd.compare(unrelated_pair.base, unrelated_pair.post, layers=[0], kinds="q", device="cuda",
                          progress=False)
    a, b = cpu.matrices(0, "q"), gpu.matrices(0, "q")
    for key in ("sim_u", "sim_v", "difference", "iorth"):
        np.testing.assert_allclose(b[key], a[key], atol=5e-4, err_msg=key)


def test_cuda_device_index_out_of_range(related_pair):
    with pytest.raises(postsvd.InvalidArgumentError, match="does not exist"):
        postsvd.compare(related_pair.base, related_pair.post, device=f"cuda:{postsvd.cuda_device_count()}",
                        progress=False)


def test_cuda_warm_start_matches_the_cold_cpu_measures(related_pair):
    """The post from the base's factors on the device (issue 15): same measures as the cold CPU path."""
    cold = postsvd.compare(related_pair.base, related_pair.post, progress=False, warm_start="off",
                           dtype="float64").table
    warm = postsvd.compare(related_pair.base, related_pair.post, device="cuda", progress=False,
                           warm_start="always").table
    assert (warm["warm_sweeps"] >= 1).all(), warm["warm_sweeps"].tolist()
    assert (cold["warm_sweeps"] == -1).all()
    for column in ("scaling_mean", "scaling_std", "nf", "sigma_base_max", "iorth_diag_mean"):
        np.testing.assert_allclose(warm[column], cold[column], atol=1e-4, err_msg=column)


def test_cuda_warm_start_falls_back_on_an_unrelated_pair(unrelated_pair):
    cold = postsvd.compare(unrelated_pair.base, unrelated_pair.post, progress=False, warm_start="off").table
    warm = postsvd.compare(unrelated_pair.base, unrelated_pair.post, device="cuda", progress=False,
                           warm_start="always").table
    for column in ("scaling_mean", "nf", "iorth_diag_mean"):
        np.testing.assert_allclose(warm[column], cold[column], atol=2e-4, err_msg=column)
