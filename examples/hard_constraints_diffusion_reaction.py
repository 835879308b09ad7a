"""1-D diffusion-reaction: soft constraint (PINN loss) vs one hard-constraint expert vs four.

    u_t = nu u_xx + rho u (1 - u),   x in [0, 1) periodic,  t in [0, 1],
    u(x, 0) = exp(-(x - 1/2)^2 / (2 * 0.1^2))

A network (input ``sin 2 pi x, cos 2 pi x, t``, so periodic by construction; two tanh layers)
outputs ``--basis`` basis functions. *Soft*: ``u`` is a learned linear combination of them,
trained on the PINN loss (PDE residual + initial condition at fresh random points each step).
*Hard*: ``u = sum_j w_j* phi_j`` with ``w*`` from ``ppl.backends.hard_constraints``: one
expert over the whole domain, or four (``split [1, 4]``, time slabs, the initial condition
given to every expert as in the paper's 1-D code), each solving the nonlinear least-squares
problem on its own ``--points`` sampled points by Levenberg-Marquardt; the network is trained
on the same PINN loss of the constrained ``u`` at fresh points (gradients through the implicit
function theorem). Ground truth: explicit finite differences on 256 points (dt = 1e-4).
Reports the relative L2 error on a 64 x 51 grid and the training time of each.

    python examples/hard_constraints_diffusion_reaction.py            # ~3-5 min on 2 CPU cores
    python examples/hard_constraints_diffusion_reaction.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)   # the LM solve and its implicit gradient need float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ppl.backends import hard_constraints as hc  # noqa: E402

PAPER = ("PI-HC-MoE is more accurate than PI-HC (one global constraint) and than the soft "
         "constraint on 1-D diffusion-sorption and 2-D Navier-Stokes, and trains and infers "
         "faster than PI-HC (abstract; their experiments are neural operators on PDEBench)")


def fd_solution(nu, rho, nx=256, dt=1e-4, t_end=1.0, save_every=0.02):
    """Explicit Euler / central differences, periodic; rows at t = 0, save_every, ..., t_end."""
    x = np.arange(nx) / nx
    u = np.exp(-(x - 0.5) ** 2 / (2 * 0.1 ** 2))
    dx2 = (1.0 / nx) ** 2
    assert nu * dt / dx2 < 0.5, "explicit scheme unstable"
    every = int(round(save_every / dt))
    out = [u.copy()]
    for n in range(1, int(round(t_end / dt)) + 1):
        u = u + dt * (nu * (np.roll(u, 1) - 2 * u + np.roll(u, -1)) / dx2 + rho * u * (1 - u))
        if n % every == 0:
            out.append(u.copy())
    return x, np.arange(len(out)) * save_every, np.stack(out)


def init_net(key, width, basis):
    sizes = [3, width, width, basis]
    keys = jax.random.split(key, len(sizes))
    layers = [(jax.random.normal(k, (a, b)) * np.sqrt(1.0 / a), jnp.zeros(b))
              for k, a, b in zip(keys, sizes[:-1], sizes[1:])]
    return {"layers": layers, "w": jax.random.normal(keys[-1], (basis,)) * 0.1}


def basis_fn(params, p):
    """The ``basis`` functions at one point ``p = (x, t)``."""
    x, t = p
    h = jnp.stack([jnp.sin(2 * jnp.pi * x), jnp.cos(2 * jnp.pi * x), 2 * t - 1])
    for a, b in params["layers"][:-1]:
        h = jnp.tanh(h @ a + b)
    a, b = params["layers"][-1]
    return h @ a + b


def basis_jet(params, pts):
    """``phi, phi_t, phi_xx`` at points ``(P, 2)``, each ``(P, N)``."""
    def one(p):
        f = lambda q: basis_fn(params, q)
        jac = jax.jacfwd(f)(p)
        hxx = jax.jacfwd(lambda q: jax.jacfwd(f)(q)[:, 0])(p)[:, 0]
        return f(p), jac[:, 1], hxx
    return jax.vmap(one)(pts)


def u0(x):
    return jnp.exp(-(x - 0.5) ** 2 / (2 * 0.1 ** 2))


def pinn_loss(u, u_t, u_xx, u_ic, x_ic, nu, rho):
    pde = u_t - nu * u_xx - rho * u * (1 - u)
    return jnp.mean(pde ** 2) + jnp.mean((u_ic - u0(x_ic)) ** 2)


def make_methods(args):
    nu, rho = args.nu, args.rho
    x_ic = jnp.linspace(0.0, 1.0, args.ic_points, endpoint=False)
    ic_pts = jnp.stack([x_ic, jnp.zeros_like(x_ic)], -1)

    def constraint_residual(w, data):
        phi, phi_t, phi_xx, phi_ic = data
        u = phi @ w
        pde = phi_t @ w - nu * (phi_xx @ w) - rho * u * (1 - u)
        return jnp.concatenate([pde, phi_ic @ w - u0(x_ic)])

    layer = hc.HardConstraint(constraint_residual, args.basis, rtol=args.tol, atol=args.tol,
                              max_steps=100, throw=False)

    def soft_u(params, pts):
        phi, phi_t, phi_xx = basis_jet(params, pts)
        w = params["w"]
        return phi @ w, phi_t @ w, phi_xx @ w

    def soft_loss(params, key, w_prev):
        pts = jax.random.uniform(key, (args.points, 2))
        u, u_t, u_xx = soft_u(params, pts)
        u_ic = basis_jet(params, ic_pts)[0] @ params["w"]
        return pinn_loss(u, u_t, u_xx, u_ic, x_ic, nu, rho), (w_prev, jnp.array(True))

    def hard_solve(params, dom, key, w_prev):
        # the same total number of constraint points however the domain is split
        pts = dom.sample(key, args.points // dom.num_experts)                # (K, M/K, 2)
        jets = jax.vmap(lambda p: basis_jet(params, p))(pts)
        phi_ic = basis_jet(params, ic_pts)[0]
        k = dom.num_experts
        data = (*jets, jnp.broadcast_to(phi_ic, (k, *phi_ic.shape)))
        return layer.solve(data, jax.lax.stop_gradient(w_prev))

    def hard_u(params, dom, weights, pts):
        phi, phi_t, phi_xx = basis_jet(params, pts)
        return tuple(dom.combine(pts, f, weights) for f in (phi, phi_t, phi_xx))

    def make_hard_loss(dom):
        def loss(params, key, w_prev):
            k1, k2 = jax.random.split(key)
            sol = hard_solve(params, dom, k1, w_prev)
            pts = jax.random.uniform(k2, (args.points, 2))
            u, u_t, u_xx = hard_u(params, dom, sol.weights, pts)
            u_ic = dom.combine(ic_pts, basis_jet(params, ic_pts)[0], sol.weights)
            value = pinn_loss(u, u_t, u_xx, u_ic, x_ic, nu, rho)
            if args.interface_weight and dom.num_experts > 1:
                value = value + args.interface_weight * interface_jump(params, dom, sol.weights)
            return (value,
                    (jax.lax.stop_gradient(sol.weights), sol.converged.all()))
        return loss

    def interface_jump(params, dom, weights):
        """Mean squared jump of u across the inner time faces (experts k-1 and k of a temporal
        split): the pointwise PINN loss cannot see a discontinuity between subdomains."""
        sx, st = dom.split
        xs = jnp.linspace(0.0, 1.0, args.ic_points, endpoint=False)
        jumps = []
        for ix in range(sx):
            for it in range(1, st):
                k = ix * st + it
                xf = (ix + (xs + 0.5 / args.ic_points)) / sx
                pts = jnp.stack([xf, jnp.full_like(xf, it / st)], -1)
                phi = basis_jet(params, pts)[0]
                jumps.append(phi @ weights[k] - phi @ weights[k - 1])
        return jnp.mean(jnp.concatenate(jumps) ** 2)

    def make_predict(dom):
        def predict(params, grid_pts, w_prev, key):
            if dom is None:
                return soft_u(params, grid_pts)[0]
            sol = hard_solve(params, dom, key, w_prev)
            return dom.combine(grid_pts, basis_jet(params, grid_pts)[0], sol.weights)
        return predict

    one = hc.split_domain([0.0, 0.0], [1.0, 1.0], [1, 1])
    moe = hc.split_domain([0.0, 0.0], [1.0, 1.0], args.split)
    return {
        "soft (PINN loss)": (soft_loss, make_predict(None), 1),
        "hard, 1 expert": (make_hard_loss(one), make_predict(one), 1),
        f"hard, MoE {moe.num_experts} experts": (make_hard_loss(moe), make_predict(moe), moe.num_experts),
    }


def train(loss, predict, k_experts, args, grid_pts, truth):
    params = init_net(jax.random.key(args.seed), args.width, args.basis)
    opt = optax.adam(args.lr)
    state = opt.init(params)
    w_prev = jnp.zeros((k_experts, args.basis))

    @jax.jit
    def step(params, state, w_prev, key):
        (val, (w_new, conv)), g = jax.value_and_grad(loss, has_aux=True)(params, key, w_prev)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, w_new, val, conv

    keys = jax.random.split(jax.random.key(args.seed + 1), args.steps)
    params_c, state_c, w_c, val, _ = step(params, state, w_prev, keys[0])   # compile
    jax.block_until_ready(val)
    t0 = time.perf_counter()
    n_unconverged = 0
    for i in range(args.steps):
        params, state, w_prev, val, conv = step(params, state, w_prev, keys[i])
        n_unconverged += int(not bool(conv))
    jax.block_until_ready(val)
    t_train = time.perf_counter() - t0
    pred_fn = jax.jit(predict)
    jax.block_until_ready(pred_fn(params, grid_pts, w_prev, jax.random.key(7)))
    t0 = time.perf_counter()
    pred = jax.block_until_ready(pred_fn(params, grid_pts, w_prev, jax.random.key(7)))
    t_pred = time.perf_counter() - t0
    err = float(jnp.linalg.norm(pred - truth) / jnp.linalg.norm(truth))
    return err, t_train, t_pred, float(val), n_unconverged


def _namespace_with(ns, **kw):
    return argparse.Namespace(**{**vars(ns), **kw})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nu", type=float, default=0.01)
    ap.add_argument("--rho", type=float, default=3.0)
    ap.add_argument("--basis", type=int, default=16)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--points", type=int, default=256,
                    help="constraint points in all (split among the experts); the loss uses as many fresh ones")
    ap.add_argument("--interface-weight", type=float, default=1.0,
                    help="weight of the u-jump across the experts' inner time faces in the loss (0: none)")
    ap.add_argument("--ic-points", type=int, default=32)
    ap.add_argument("--split", type=int, nargs=2, default=[1, 4])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="runs per method (seed, seed+1, ...); mean and sd")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.points, args.basis, args.width, args.ic_points, args.seeds = 5, 64, 8, 12, 16, 1

    x, t, truth = fd_solution(args.nu, args.rho)
    xi, ti = np.arange(0, 256, 4), np.arange(len(t))
    X, T = np.meshgrid(x[xi], t[ti], indexing="ij")
    grid_pts = jnp.asarray(np.stack([X.ravel(), T.ravel()], -1))
    truth_grid = jnp.asarray(truth[np.ix_(ti, xi)].T.ravel())

    seeds = range(args.seed, args.seed + args.seeds)
    print(f"diffusion-reaction nu={args.nu} rho={args.rho}; {args.basis} basis functions, "
          f"{args.points} constraint points in all, {args.steps} Adam steps (lr {args.lr}), "
          f"interface weight {args.interface_weight}, seeds {list(seeds)}")
    print(f"{'method':24s} {'rel. L2':>9s} {'(sd)':>7s} {'train s':>8s} {'ms/step':>8s} {'infer ms':>9s} "
          f"{'final loss':>11s} {'steps w/o LM conv.':>18s}")
    rows = {}
    for name, (loss, predict, k) in make_methods(args).items():
        runs = []
        for seed in seeds:
            runs.append(train(loss, predict, k, _namespace_with(args, seed=seed), grid_pts, truth_grid))
        err, t_train, t_pred, val, n_unc = (np.mean([r[i] for r in runs]) for i in range(5))
        sd = np.std([r[0] for r in runs], ddof=1) if len(runs) > 1 else float("nan")
        rows[name] = err
        print(f"{name:24s} {err:9.4f} {sd:7.4f} {t_train:8.1f} {1e3 * t_train / args.steps:8.1f} "
              f"{1e3 * t_pred:9.1f} {val:11.3e} {n_unc:18.1f}")
    print(f"paper: {PAPER}")
    return rows


if __name__ == "__main__":
    main()
