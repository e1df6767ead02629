"""Linear CKA against an independent HSIC-form reference, its invariances, and the
layers x layers matrix of real (tiny) models."""
import warnings

import numpy as np
import pytest

from postsvd.functional.cka import cka_matrix, layer_representations, linear_cka, plot_cka

PROMPTS = ["Tom has 3 apples and buys 4 more.", "What is 81 divided by 9?", "A box holds 12 pens.",
           "Sara had 1,500 dollars and spent 250.", "Which number is prime: 4, 6, 7 or 9?"]


def hsic_cka(X, Y):
    """Independent reference: CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, L = Y Y^T."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return np.trace(A @ H @ B @ H)

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("n, p, q", [(6, 40, 30), (200, 5, 7), (30, 30, 2)])
def test_linear_cka_matches_hsic_form(n, p, q):
    rng = np.random.default_rng(n + p + q)
    X = rng.normal(size=(n, p))
    Y = X[:, :min(p, q)] @ rng.normal(size=(min(p, q), q)) + 0.5 * rng.normal(size=(n, q))
    assert linear_cka(X, Y) == pytest.approx(hsic_cka(X, Y), rel=1e-10)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), rel=1e-12)
    assert 0.0 <= linear_cka(X, Y) <= 1.0


@pytest.mark.parametrize("n, p", [(8, 20), (100, 6)])
def test_linear_cka_invariances(n, p):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, p))
    Q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X @ Q) == pytest.approx(1.0, abs=1e-10)          # orthogonal transform
    assert linear_cka(X, 3.7 * X) == pytest.approx(1.0, abs=1e-12)        # isotropic scaling
    assert linear_cka(X, X + 5.0) == pytest.approx(1.0, abs=1e-10)        # translation (centred)
    Y = rng.normal(size=(n, p))
    assert linear_cka(X @ Q, 2.0 * Y) == pytest.approx(linear_cka(X, Y), rel=1e-9)
    # not invariant to a non-isotropic scaling
    assert linear_cka(X, X * np.linspace(0.1, 10.0, p)) < 0.999


def test_linear_cka_bad_input():
    X = np.ones((4, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.isnan(linear_cka(X, np.arange(12.0).reshape(4, 3)))
    assert any("constant" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match=r"same number of examples.*X \[4, 3\] and Y \[5, 3\]"):
        linear_cka(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"expected shape \[examples, features\], got \[4\]"):
        linear_cka(np.zeros(4), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="at least 2 examples"):
        linear_cka(np.zeros((1, 3)), np.zeros((1, 3)))
    bad = np.eye(3)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="Y: contains NaN or infinite"):
        linear_cka(np.eye(3), bad)


torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_cka_matrix_of_a_model_with_itself(tiny_model_dir):
    reps = layer_representations(tiny_model_dir, PROMPTS)
    assert reps.shape == (3, len(PROMPTS), 32) and reps.dtype == np.float64
    matrix = cka_matrix(tiny_model_dir, tiny_model_dir, PROMPTS)
    assert matrix.shape == (3, 3)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-10)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
    # each entry is linear_cka of the per-layer [prompts, hidden] representations
    assert matrix[0, 2] == pytest.approx(linear_cka(reps[0], reps[2]), abs=1e-10)


def test_cka_matrix_between_models(tiny_model_dir, tiny_model_dir_b):
    reps_a = layer_representations(tiny_model_dir, PROMPTS)
    matrix = cka_matrix(reps_a, tiny_model_dir_b, PROMPTS)   # precomputed A, model B
    assert matrix.shape == (3, 4)
    reps_b = layer_representations(tiny_model_dir_b, PROMPTS)
    for i in range(3):
        for j in range(4):
            assert matrix[i, j] == pytest.approx(linear_cka(reps_a[i], reps_b[j]), abs=1e-10)
    assert ((matrix >= 0) & (matrix <= 1)).all()
    with pytest.raises(ValueError, match="same prompts"):
        cka_matrix(reps_a, reps_b[:, :3])
    with pytest.raises(ValueError, match="at least 2 prompt"):
        layer_representations(tiny_model_dir, PROMPTS[:1])
    with pytest.raises(ValueError, match="prompts are needed"):
        cka_matrix(reps_a, tiny_model_dir_b)


def test_cka_matrix_marks_broken_layers_nan():
    rng = np.random.default_rng(2)
    reps = rng.normal(size=(3, 6, 4))
    broken = reps.copy()
    broken[1] = np.nan        # e.g. an ablation model overflowing
    broken[2] = 1.0           # constant over the prompts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        matrix = cka_matrix(reps, broken)
    assert np.isnan(matrix[:, 1]).all() and np.isnan(matrix[:, 2]).all()
    np.testing.assert_allclose(matrix[:, 0], [linear_cka(reps[i], reps[0]) for i in range(3)])
    assert len(caught) == 2


def test_plot_cka():
    m = np.eye(3)
    fig = plot_cka(m, title="post vs ablation")
    assert fig.axes[0].get_title() == "post vs ablation"
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), m)
    fig = plot_cka({"ablation": m, "restoration": 0.5 * m})
    assert [ax.get_title() for ax in fig.axes[:2]] == ["ablation", "restoration"]
    with pytest.raises(ValueError, match="must be 2-D"):
        plot_cka(np.zeros(3))
