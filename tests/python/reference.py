"""Independent float64 numpy reference of every measure and construction (docs/measures.md), for the tests."""
import numpy as np


def sign_rule(u, v):
    """Largest-|.| entry of each column of u positive; v's matching column flips with it."""
    rows = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[rows, np.arange(u.shape[1])])
    signs[signs == 0] = 1
    return u * signs, v * signs


def svd(w):
    """Reduced SVD of w [m, n] in float64: (U [m, k], S [k], V [n, k]), sign rule applied."""
    u, s, vt = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
    u, v = sign_rule(u, vt.T)
    return u, s, v


def top90_count(k):
    """ceil(0.9 k) without floating point surprises."""
    return (9 * k + 9) // 10


def measures(w_base, w_post, leading_k=None):
    """Every measure of one pair (paper orientation [in, out])."""
    ua, sa, va = svd(w_base)
    ub, sb, vb = svd(w_post)
    k = sa.size
    scaling = sb / sa
    top = scaling[: top90_count(k)]
    q1 = ua.T @ ub
    q2 = va.T @ vb
    iorth = q1.T @ q2
    nf = np.linalg.norm(iorth - np.eye(k)) / k
    kk = k if leading_k is None else min(leading_k, k)
    q1l = ua[:, :kk].T @ ub[:, :kk]
    q2l = va[:, :kk].T @ vb[:, :kk]
    return {
        "k": k, "sigma_base": sa, "sigma_post": sb, "scaling": scaling,
        "scaling_mean": top.mean(), "scaling_std": top.std(), "scaling_count": top.size,
        "nf": nf, "iorth_diag": np.diag(iorth),
        "q1": q1l, "q2": q2l, "iorth": q1l.T @ q2l, "sim_u": np.abs(q1l), "sim_v": np.abs(q2l),
        "difference": np.abs(np.abs(q1l) - np.abs(q2l)),
    }


def pooled(scalings):
    """Pooled top-90 % mean and population std over several SVSM columns."""
    values = np.concatenate([np.asarray(s)[: top90_count(len(s))] for s in scalings])
    return values.mean(), values.std()


def random_rotation(k, rng, angle=0.5):
    """A rotation close to identity by at most `angle` (QR-free: Cayley transform of a small skew matrix)."""
    g = rng.standard_normal((k, k))
    a = (g - g.T)
    a *= np.tan(angle / 2) / np.max(np.abs(np.linalg.eigvals(a)))
    eye = np.eye(k)
    return np.linalg.solve(eye - a, eye + a)


def well_conditioned(rows, cols, rng):
    """A [rows, cols] matrix with well separated singular values in [0.2, 2]."""
    k = min(rows, cols)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    s = np.linspace(2.0, 0.2, k)
    return (u * s) @ v.T


def post_trained(w, alpha, rotation):
    """(U Q)(alpha S)(V Q)^T of w = U S V^T."""
    u, s, v = svd(w)
    return ((u @ rotation) * (alpha * s)) @ (v @ rotation).T


def construction_weight(number, w_base, w_post, w_ref=None, alpha=1.0):
    """The new W [in, out] of construction `number` by the formulas of docs/measures.md, float64 numpy."""
    ub, sb, vb = svd(w_base)
    up, sp, vp = svd(w_post)
    if number == 9:
        return (up * (alpha * sb)) @ vp.T
    if number == 14:
        return (up * sb) @ vp.T
    if number == 10:
        return (up * sp) @ vb.T
    if number == 11:
        return (up * sp) @ (vb @ (ub.T @ up)).T
    if number == 12:
        ur, _, vr = svd(w_ref)
        return (up * sp) @ (vr @ (ur.T @ up)).T
    if number == 15:
        return (ub * sp) @ vp.T
    if number == 16:
        return ((ub @ (vb.T @ vp)) * sp) @ vp.T
    raise ValueError(number)


def intruders(w_base, w_post, k=10, epsilon=0.5, side="output"):
    """Algorithm 1 of Shuttleworth et al. 2024 as their code runs it, in float64: the SVD of each stored
    weight W_hf = w.T ([out, in]; w in paper orientation), then for each of the top k left singular vectors of
    the post weight (the output side; 'input': the right singular vectors) its largest |cosine| with every
    base one; the intruders are those below epsilon. Returns (count, cosines [min(k, rank)])."""
    def vectors(w):
        u, _, vt = np.linalg.svd(np.asarray(w, dtype=np.float64).T, full_matrices=False)
        return u if side == "output" else vt.T

    base, post = vectors(w_base), vectors(w_post)
    cosines = np.abs(post.T @ base).max(axis=1)[:k]
    return int(np.sum(cosines < epsilon)), cosines
