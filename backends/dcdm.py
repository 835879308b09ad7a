"""Deep conjugate direction method (DCDM): conjugate directions proposed by a trained network.

Kaneda, Akar, Chen, Kala, Sarkar, Teran, "A Deep Conjugate Direction Method for Iteratively
Solving Linear Systems" (ICML 2023). To solve ``A x = b`` (``A`` symmetric positive definite,
given as a ``matvec``), each iteration asks a network ``f`` for a direction from the normalized
residual, makes it A-orthogonal to the two previous directions, and steps to the minimizer of
the A-norm error along it:

    q = f(r_k / ||r_k||);   q -= (q.A p_k / p_k.A p_k) p_k + (q.A p_{k-1} / p_{k-1}.A p_{k-1}) p_{k-1}
    alpha = q.r_k / q.A q;  x_{k+1} = x_k + alpha q;  r_{k+1} = b - A x_{k+1}

With ``f`` the identity this is conjugate gradients (in exact arithmetic ``r_{k+1}`` is already
A-orthogonal to all but the last direction); with ``f = A^{-1}`` it converges in one step. The
network is trained without solutions, on the scale-invariant loss
``E_b ||b - A q (q.b)/(q.A q)||^2`` with ``q = f(b)`` (the residual after one DCDM step from 0),
over right-hand sides mixed from Ritz vectors of ``A`` (:func:`ritz_vectors`,
:func:`training_rhs`), weighted towards the low end of the spectrum that CG resolves slowly.

Because the direction is nonlinear in the residual, it cannot sit in a linear preconditioner
slot (lineax's CG); :func:`dcdm` is its own ``lax.while_loop``. :class:`DCDM` wraps it as a
linear-solver config for ``ppl.transforms.implicit.custom_root(..., solve=DCDM(...))``.
:func:`poisson_2d` and :func:`direction_net_init` / :func:`direction_net_apply` (a small
convolutional network with one pooling level, after the paper's) reproduce its 2-D Poisson
experiment (``examples/dcdm_poisson.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ppl.transforms import implicit

from ._lanczos import lanczos

__all__ = ["DCDM", "DCDMResult", "dcdm", "dcdm_loss", "direction_net_apply", "direction_net_init",
           "poisson_2d", "ritz_vectors", "train_direction_net", "training_rhs"]


class DCDMResult(NamedTuple):
    """``x``; ``iterations`` taken; ``residuals[k] = ||b - A x_k|| / ||b - A x_0||`` for
    ``k <= iterations`` (NaN after); ``converged``: the last one is ``<= tol``;
    ``fallbacks``: how many iterations took the steepest-descent direction (see :func:`dcdm`)."""
    x: jax.Array
    iterations: jax.Array
    residuals: jax.Array
    converged: jax.Array
    fallbacks: jax.Array


def _check_args(fn, tol, maxiter):
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"{fn}(tol={tol!r}): the relative residual tolerance must be a finite number > 0")
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1:
        raise ValueError(f"{fn}(maxiter={maxiter!r}): must be an integer >= 1")


def dcdm(matvec: Callable, b, direction: Callable, *, x0=None, tol: float = 1e-4,
         maxiter: int = 100, stall_ratio: float = 0.01) -> DCDMResult:
    """Solve ``A x = b`` by DCDM; ``direction(r)`` maps a unit-norm residual (shaped like ``b``)
    to a search direction of the same shape. Stops at ``||r_k|| <= tol ||r_0||`` or ``maxiter``.
    Works under ``jit`` and ``vmap`` (over ``b``).

    Stall guard (ours, not the paper's): a step along ``q`` lowers the squared A-norm of the
    error by ``(q.r)^2 / q.A q``. When that is below ``stall_ratio`` times what a steepest-descent
    step along ``r`` would gain, ``(r.r)^2 / r.A r``, the iteration steps along ``r`` instead
    (counted in ``fallbacks``). Without it an imperfect network can stall for good: once a step
    barely moves ``x``, the residual, hence the network's next direction, is the same as before,
    and orthogonalizing it against that very direction leaves nothing. ``stall_ratio=0`` is the
    paper's iteration exactly. Costs one extra matvec per iteration.
    """
    _check_args("dcdm", tol, maxiter)
    if not (np.isfinite(stall_ratio) and 0 <= stall_ratio <= 1):
        raise ValueError(f"dcdm(stall_ratio={stall_ratio!r}): must lie in [0, 1] (0 disables the stall guard)")
    b = jnp.asarray(b)
    x0 = jnp.zeros_like(b) if x0 is None else jnp.asarray(x0, b.dtype)
    if x0.shape != b.shape:
        raise ValueError(f"dcdm: x0 has shape {x0.shape} but b has shape {b.shape}; they must match")
    for name, v in (("b", b), ("x0", x0)):
        if not isinstance(v, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(v))):
            raise ValueError(f"dcdm: {name} contains NaN or infinite values; there is nothing to solve")
    dot = lambda u, v: jnp.vdot(u, v).real
    tiny = jnp.finfo(b.dtype).tiny

    def proj(q, p, ap):  # q's component along p in the A-inner product (0 for the zero direction)
        pap = dot(p, ap)
        return jnp.where(pap > tiny, dot(q, ap) / jnp.where(pap > tiny, pap, 1.0), 0.0) * p

    r0 = b - matvec(x0)
    n0 = jnp.linalg.norm(r0)
    # 1 for a nonzero residual, 0 for an exact start, NaN when it is not finite (under jit)
    hist = jnp.full((maxiter + 1,), jnp.nan, b.dtype).at[0].set(jnp.where(n0 > 0, 1.0, n0))
    zero = jnp.zeros_like(b)

    def cond(s):
        k, _, r, *_ = s
        return (k < maxiter) & (jnp.linalg.norm(r) > tol * n0)

    def gain(q, aq, r):  # decrease of the squared A-norm error by the line minimization along q
        qaq = dot(q, aq)
        return jnp.where(qaq > tiny, dot(q, r) ** 2 / jnp.where(qaq > tiny, qaq, 1.0), 0.0)

    def body(s):
        k, x, r, p1, ap1, p2, ap2, hist, nfall = s
        q = direction(r / jnp.linalg.norm(r))
        q = q - proj(q, p1, ap1) - proj(q, p2, ap2)
        aq = matvec(q)
        ar = matvec(r)
        stall = gain(q, aq, r) < stall_ratio * gain(r, ar, r)
        q, aq = jnp.where(stall, r, q), jnp.where(stall, ar, aq)
        qaq = dot(q, aq)
        alpha = jnp.where(qaq > tiny, dot(q, r) / jnp.where(qaq > tiny, qaq, 1.0), 0.0)
        x = x + alpha * q
        r = b - matvec(x)
        hist = hist.at[k + 1].set(jnp.linalg.norm(r) / n0)
        return k + 1, x, r, q, aq, p1, ap1, hist, nfall + stall.astype(jnp.int32)

    k0 = jnp.zeros((), jnp.int32)
    k, x, r, *_, hist, nfall = jax.lax.while_loop(cond, body, (k0, x0, r0, zero, zero, zero, zero, hist, k0))
    return DCDMResult(x, k, hist, jnp.linalg.norm(r) <= tol * n0, nfall)


def dcdm_loss(direction: Callable, matvec: Callable, b_batch) -> jax.Array:
    """The paper's unsupervised loss, averaged over a batch of right-hand sides ``[B, ...]``:
    ``||b - A q (q.b) / (q.A q)||^2`` with ``q = direction(b)``; invariant to the scale of ``q``,
    zero iff ``q`` is proportional to ``A^{-1} b``."""
    def one(b):
        q = direction(b)
        aq = matvec(q)
        coef = jnp.vdot(q, b) / jnp.vdot(q, aq)
        return jnp.sum((b - coef * aq) ** 2)
    return jnp.mean(jax.vmap(one)(b_batch))


@dataclasses.dataclass(frozen=True, eq=False)
class DCDM:
    """DCDM as a linear-solver config for ``implicit.custom_root(F, solve=DCDM(direction))``.

    The system there is ``(dF/dx) v = rhs``, which must be symmetric positive definite (e.g.
    ``F`` the gradient of a strictly convex function) and of the shape ``direction`` was trained
    on. A pytree right-hand side is flattened; ``direction`` sees the flat vector. Non-convergence
    raises ``implicit.LinearSolveError`` like the other solvers (``check=False`` to skip).
    """
    direction: Callable
    tol: float = 1e-6
    maxiter: int = 200
    check: bool = True
    atol: float = 0.0
    ridge: float = 0.0

    symmetric = True

    def __post_init__(self):
        _check_args("DCDM", self.tol, self.maxiter)

    def __call__(self, matvec: Callable, b: Any, x0: Any = None):
        """Solve; return ``(x, implicit.SolveInfo)`` without raising."""
        flat_b, unravel = ravel_pytree(b)
        flat_mv = lambda v: ravel_pytree(matvec(unravel(v)))[0]
        flat_x0 = None if x0 is None else ravel_pytree(x0)[0]
        res = dcdm(flat_mv, flat_b, self.direction, x0=flat_x0, tol=self.tol, maxiter=self.maxiter)
        resid = jnp.linalg.norm(flat_b - flat_mv(res.x))
        # the same slack of 10 on the true residual as the other solvers' checks
        thr = 10.0 * self.tol * jnp.linalg.norm(flat_b)
        return unravel(res.x), implicit.SolveInfo(resid, thr, jnp.isfinite(resid) & (resid <= thr))

    def solve_checked(self, matvec: Callable, b: Any) -> Any:
        x, info = self(matvec, b)
        if self.check:
            def _cb(res, thr, ok):
                implicit.check(implicit.SolveInfo(res, thr, ok), self, "DCDM")
            implicit.batch_callback(_cb, *info)
        return x


def poisson_2d(n: int, dtype=jnp.float32) -> Callable:
    """The 5-point Laplacian ``-(Delta_h)`` on an ``n x n`` interior grid with zero Dirichlet
    boundary (scaled by ``h^2``: 4 on the diagonal), as a matvec on ``[n, n]`` arrays (SPD)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"poisson_2d(n={n!r}): the grid size must be an integer >= 2")

    def matvec(u):
        if u.shape[-2:] != (n, n):
            raise ValueError(f"poisson_2d({n}) matvec: expected an array ending in ({n}, {n}), got {u.shape}")
        p = jnp.pad(u, [(0, 0)] * (u.ndim - 2) + [(1, 1), (1, 1)])
        return 4 * u - p[..., :-2, 1:-1] - p[..., 2:, 1:-1] - p[..., 1:-1, :-2] - p[..., 1:-1, 2:]
    return matvec


def ritz_vectors(matvec: Callable, shape, num: int, *, key) -> tuple[jax.Array, jax.Array]:
    """``num`` Ritz pairs of the SPD operator from ``num`` Lanczos steps with full
    reorthogonalization, started from a random vector (restarted in a new direction when its
    Krylov space is exhausted): ``(values [num], vectors [num, *shape])``, ascending. The low
    Ritz values converge to the low end of the spectrum."""
    size = int(np.prod(shape))
    if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= size:
        raise ValueError(f"ritz_vectors(num={num!r}): must be an integer in [1, {size}]")
    mv = lambda v: matvec(v.reshape(shape)).reshape(size)
    v0 = jax.random.normal(key, (size,))
    alphas, betas, basis = lanczos(mv, v0 / jnp.linalg.norm(v0), num, restart=True)
    t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    vals, vecs = jnp.linalg.eigh(t)
    return vals, (vecs.T @ basis).reshape((num,) + tuple(shape))


def training_rhs(key, ritz, batch: int, *, low_fraction: float = 0.5, low_weight: float = 9.0):
    """A batch of unit-norm right-hand sides ``b = normalize(sum_j c_j v_j)``, ``c_j ~ N(0, 1)``,
    the coefficients of the lowest ``low_fraction`` of the Ritz vectors ``ritz [m, ...]``
    (ascending) multiplied by ``low_weight`` (the paper's recipe)."""
    m = ritz.shape[0]
    w = jnp.where(jnp.arange(m) < int(round(low_fraction * m)), low_weight, 1.0)
    c = jax.random.normal(key, (batch, m)) * w
    b = jnp.tensordot(c, ritz, axes=1)
    norms = jnp.sqrt(jnp.sum(b.reshape(batch, -1) ** 2, axis=1))
    return b / norms.reshape((batch,) + (1,) * (b.ndim - 1))


def train_direction_net(params, matvec: Callable, ritz, key, *, steps: int, batch: int = 16,
                        optimizer=None, apply: Callable = None):
    """Train a direction network on :func:`dcdm_loss` over batches of :func:`training_rhs`
    (one batch per step, from ``jax.random.split(key, steps)``), with ``optimizer`` (an optax
    transformation; Adam with learning rate 1e-3 by default). ``apply(params, r)`` is the
    network (:func:`direction_net_apply` by default). Returns ``(params, losses [steps])``; the
    steps run in one compiled ``lax.scan``."""
    for name, v in (("steps", steps), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"train_direction_net({name}={v!r}): must be an integer >= 1")
    opt = optax.adam(1e-3) if optimizer is None else optimizer
    apply = direction_net_apply if apply is None else apply

    def step(carry, k):
        params, state = carry
        b = training_rhs(k, ritz, batch)
        loss, g = jax.value_and_grad(lambda p: dcdm_loss(lambda r: apply(p, r), matvec, b))(params)
        u, state = opt.update(g, state, params)
        return (optax.apply_updates(params, u), state), loss

    run = jax.jit(lambda params, keys: jax.lax.scan(step, (params, opt.init(params)), keys))
    (params, _), losses = run(params, jax.random.split(key, steps))
    return params, losses


def _conv(x, w, b):  # x [H, W, Cin], w [3, 3, Cin, Cout]
    y = jax.lax.conv_general_dilated(x[None], w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[0] + b


def direction_net_init(key, *, filters: int = 16, blocks: int = 2) -> dict:
    """Parameters of the direction network: a 3x3 convolution in, ``blocks`` residual blocks at
    full resolution, one 2x2 average-pool level with ``blocks`` residual blocks, nearest
    upsampling added back, a 3x3 convolution out (the paper's shape, in 2-D and smaller)."""
    def conv(k, cin, cout, scale=1.0):
        return {"w": scale * jax.random.normal(k, (3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin)),
                "b": jnp.zeros(cout)}
    keys = iter(jax.random.split(key, 4 * blocks + 2))
    block = lambda: [conv(next(keys), filters, filters), conv(next(keys), filters, filters, 0.1)]
    return {"in": conv(next(keys), 1, filters), "full": [block() for _ in range(blocks)],
            "half": [block() for _ in range(blocks)], "out": conv(next(keys), filters, 1)}


def direction_net_apply(params: dict, r) -> jax.Array:
    """The direction for a residual ``r [H, W]`` (``H``, ``W`` even)."""
    def res(h, blk):
        return h + _conv(jax.nn.relu(_conv(h, blk[0]["w"], blk[0]["b"])), blk[1]["w"], blk[1]["b"])
    h = _conv(r[..., None], params["in"]["w"], params["in"]["b"])
    for blk in params["full"]:
        h = res(h, blk)
    hh = h.reshape(h.shape[0] // 2, 2, h.shape[1] // 2, 2, -1).mean(axis=(1, 3))
    for blk in params["half"]:
        hh = res(hh, blk)
    h = h + jnp.repeat(jnp.repeat(hh, 2, axis=0), 2, axis=1)
    return _conv(jax.nn.relu(h), params["out"]["w"], params["out"]["b"])[..., 0]
