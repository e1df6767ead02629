"""postsvd.svd against numpy float64: reconstruction, orthogonality, sign rule, layouts, precisions."""
import os
import subprocess
import sys

import numpy as np
import pytest

import postsvd
import reference

TOLERANCE = {"float32": 2e-5, "float64": 1e-12}


def check_decomposition(w, u, s, v, dtype):
    w64 = np.asarray(w, dtype=np.float64)
    m, n = w64.shape
    k = min(m, n)
    tol = TOLERANCE[dtype]
    assert u.shape == (m, k) and s.shape == (k,) and v.shape == (n, k)
    assert u.dtype == np.dtype(dtype) and s.dtype == np.dtype(dtype) and v.dtype == np.dtype(dtype)
    scale = np.linalg.norm(w64, 2)
    # Reconstruction, orthonormal columns, descending sigma equal to numpy's.
    assert np.abs(u @ np.diag(s) @ v.T - w64).max() <= 20 * tol * scale
    assert np.abs(u.T @ u - np.eye(k)).max() <= 20 * tol * np.sqrt(k)
    assert np.abs(v.T @ v - np.eye(k)).max() <= 20 * tol * np.sqrt(k)
    assert np.all(np.diff(s) <= 0)
    np.testing.assert_allclose(s, np.linalg.svd(w64, compute_uv=False), atol=10 * tol * scale, rtol=0)
    # Sign rule: the largest-|.| entry of each column of U is positive.
    rows = np.argmax(np.abs(u), axis=0)
    assert np.all(u[rows, np.arange(k)] > 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(48, 48), (64, 24), (24, 64), (1, 7), (7, 1)])
def test_svd_matches_numpy(rng, dtype, shape):
    w = rng.standard_normal(shape)
    u, s, v = postsvd.svd(w.astype(dtype), dtype=dtype)
    check_decomposition(w.astype(dtype), u, s, v, dtype)


def test_svd_vectors_match_reference_with_sign_rule(rng):
    # Well separated sigma: the singular vectors are unique up to sign, and the sign rule fixes the sign.
    w = reference.well_conditioned(40, 30, rng)
    u, s, v = postsvd.svd(w, dtype="float64")
    ru, rs, rv = reference.svd(w)
    np.testing.assert_allclose(s, rs, atol=1e-12)
    np.testing.assert_allclose(u, ru, atol=1e-9)
    np.testing.assert_allclose(v, rv, atol=1e-9)


def test_svd_fortran_c_and_strided_inputs_agree(rng):
    w = rng.standard_normal((30, 20)).astype(np.float32)
    reference_sigma = postsvd.svd(w)[1]
    fortran = np.asfortranarray(w)
    big = np.zeros((60, 40), dtype=np.float32)
    big[::2, ::2] = w
    strided = big[::2, ::2]
    transposed = np.ascontiguousarray(w.T).T  # Fortran order through a transpose
    for variant in (fortran, strided, transposed):
        assert np.array_equal(variant, w)
        u, s, v = postsvd.svd(variant)
        np.testing.assert_allclose(s, reference_sigma, rtol=1e-6, atol=1e-6)
        check_decomposition(w, u, s, v, "float32")
    reversed_rows = w[::-1]  # negative strides: copied, then decomposed
    check_decomposition(reversed_rows, *postsvd.svd(reversed_rows), "float32")


def test_svd_dtype_defaults_and_conversions(rng):
    w = rng.standard_normal((12, 9))
    assert postsvd.svd(w)[1].dtype == np.float64  # float64 input keeps float64
    assert postsvd.svd(w.astype(np.float32))[1].dtype == np.float32
    assert postsvd.svd(w.astype(np.float16))[1].dtype == np.float32
    assert postsvd.svd(w, dtype="float32")[1].dtype == np.float32
    ints = np.arange(12 * 9).reshape(12, 9) % 7
    check_decomposition(ints, *postsvd.svd(ints), "float64")


def test_svd_accepts_torch_bfloat16():
    torch = pytest.importorskip("torch")
    tensor = torch.randn(16, 8).to(torch.bfloat16)
    u, s, v = postsvd.svd(tensor)
    check_decomposition(tensor.float().numpy(), u, s, v, "float32")


@pytest.mark.parametrize("bad, message", [
    (np.zeros(5), "expected a 2-D array"),
    (np.zeros((2, 3, 4)), "expected a 2-D array"),
    (np.zeros((0, 4)), "non-empty"),
    (np.array([[1 + 1j, 2]]), "real float"),
])
def test_svd_rejects_bad_arrays(bad, message):
    with pytest.raises(postsvd.InvalidArgumentError, match=message):
        postsvd.svd(bad)


def test_svd_rejects_nan_and_inf(rng):
    w = rng.standard_normal((6, 5))
    w[2, 3] = np.nan
    with pytest.raises(ValueError, match="array"):
        postsvd.svd(w)
    w[2, 3] = np.inf
    with pytest.raises(postsvd.InvalidArgumentError):
        postsvd.svd(w.astype(np.float32))


def test_svd_rejects_bad_dtype_and_device(rng):
    w = rng.standard_normal((4, 4))
    with pytest.raises(postsvd.InvalidArgumentError, match="float32, float64"):
        postsvd.svd(w, dtype="bfloat16")
    with pytest.raises(postsvd.InvalidArgumentError, match="'cpu', 'cuda'"):
        postsvd.svd(w, device="tpu")


@pytest.mark.skipif(postsvd.built_with_cuda(), reason="checks the CPU build's message")
def test_cuda_in_cpu_build_says_how_to_build_it(rng):
    with pytest.raises(postsvd.NotBuiltWithCudaError, match="POSTSVD_ENABLE_CUDA=ON") as info:
        postsvd.svd(rng.standard_normal((4, 4)), device="cuda")
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, postsvd.PostsvdError)


def test_capability_probes_agree_with_each_other():
    assert postsvd.has_cuda() == (postsvd.built_with_cuda() and postsvd.cuda_device_count() > 0)
    assert ("CUDA: not built" in postsvd.build_info()) != postsvd.built_with_cuda()
    if not postsvd.built_with_cuda():
        assert postsvd.cuda_device_count() == 0 and not postsvd.has_cuda()


def test_hidden_gpus_are_not_counted():
    """CUDA_VISIBLE_DEVICES='' hides every GPU: no device, no has_cuda, in every build; the build is the same."""
    code = ("import postsvd; print(postsvd.cuda_device_count(), postsvd.has_cuda(), postsvd.built_with_cuda()); "
            "print(postsvd.build_info())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    first, _, info = done.stdout.partition("\n")
    assert first == f"0 False {postsvd.built_with_cuda()}"
    assert ("CUDA: not built" in info) != postsvd.built_with_cuda()


def test_error_hierarchy():
    assert issubclass(postsvd.InvalidArgumentError, ValueError)
    assert issubclass(postsvd.BadCheckpointError, ValueError)
    assert issubclass(postsvd.BackendError, RuntimeError)
    assert issubclass(postsvd.NotBuiltWithCudaError, RuntimeError)
    for error in (postsvd.InvalidArgumentError, postsvd.BadCheckpointError, postsvd.BackendError,
                  postsvd.NotBuiltWithCudaError):
        assert issubclass(error, postsvd.PostsvdError)


@pytest.mark.skipif(not postsvd.built_with_cuda() or postsvd.cuda_device_count() > 0,
                    reason="checks a CUDA build on a machine without a GPU")
def test_cuda_build_without_a_gpu_says_so_not_how_to_build(rng, related_pair):
    for call in (lambda: postsvd.svd(rng.standard_normal((4, 4)), device="cuda"),
                 lambda: postsvd.compare(related_pair.base, related_pair.post, device="cuda:0", progress=False)):
        with pytest.raises(postsvd.BackendError, match="has the CUDA backend but sees no CUDA device") as info:
            call()
        assert "POSTSVD_ENABLE_CUDA" not in str(info.value) and "device='cpu'" in str(info.value)
