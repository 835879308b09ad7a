"""Tune the ridge penalty of a regression by implicit hypergradients.

Inner problem: w*(lam) = argmin_w 1/2 ||X w - y||^2 + lam/2 ||w||^2, solved by an iterative
solver (gradient descent in a lax.while_loop, which JAX cannot reverse-differentiate). Its
optimality condition F(w, lam) = X^T (X w - y) + lam w = 0 gives d w*/d lam by the implicit
function theorem (ppl.transforms.implicit.custom_root). Outer problem: minimize the validation
loss over log(lam) with Adam; the validation loss goes down as lam is tuned. At the end the
implicit hypergradient is compared with the closed form and with unrolled differentiation.

    python examples/implicit_hyperparams.py --steps 60 --out runs/implicit
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppl.transforms import implicit


def make_data(seed, n_train, n_val, dim, noise):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=dim) * (rng.uniform(size=dim) < 0.3)  # sparse truth
    X = rng.normal(size=(n_train + n_val, dim))
    y = X @ w_true + noise * rng.normal(size=n_train + n_val)
    return (X[:n_train], y[:n_train]), (X[n_train:], y[n_train:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60, help="outer (hyperparameter) steps")
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--dim", type=int, default=30)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--init-log-lam", type=float, default=-4.0)
    p.add_argument("--inner-iters", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/implicit_hyperparams")
    args = p.parse_args(argv)

    (Xt, yt), (Xv, yv) = make_data(args.seed, args.n_train, args.n_val, args.dim, args.noise)
    Xt, yt, Xv, yv = map(jnp.asarray, (Xt, yt, Xv, yv))
    L = float(np.linalg.eigvalsh(np.asarray(Xt.T @ Xt))[-1])

    def F(w, log_lam):  # gradient of the inner loss: zero at w*(lam)
        return Xt.T @ (Xt @ w - yt) + jnp.exp(log_lam) * w

    def gd_solver(w0, log_lam):
        lr = 1.0 / (L + jnp.exp(log_lam))

        def cond(c):
            w, i = c
            return (jnp.linalg.norm(F(w, log_lam)) > 1e-4) & (i < args.inner_iters)

        def body(c):
            w, i = c
            return w - lr * F(w, log_lam), i + 1

        return jax.lax.while_loop(cond, body, (w0, 0))[0]

    solve = implicit.custom_root(F, solve=implicit.CG(tol=1e-5, maxiter=500))(gd_solver)

    def val_loss(log_lam, w0):
        w = solve(w0, log_lam)
        return 0.5 * jnp.mean((Xv @ w - yv) ** 2), w

    opt = optax.adam(args.lr)

    @jax.jit
    def step(log_lam, opt_state, w0):
        (loss, w), g = jax.value_and_grad(val_loss, has_aux=True)(log_lam, w0)
        upd, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(log_lam, upd), opt_state, w, loss, g

    log_lam = jnp.asarray(args.init_log_lam)
    opt_state = opt.init(log_lam)
    w = jnp.zeros(args.dim)  # warm start: no gradient flows into the initial guess
    history = []
    for t in range(args.steps):
        log_lam, opt_state, w, loss, g = step(log_lam, opt_state, w)
        history.append((float(loss), float(log_lam)))
        if t % max(1, args.steps // 10) == 0 or t == args.steps - 1:
            print(f"step {t:4d}  val loss {float(loss):.4f}  log lam {float(log_lam):+.3f}  "
                  f"hypergrad {float(g):+.4f}", flush=True)

    # Checks at the final lam: implicit vs closed form vs unrolled (fixed-iteration GD).
    def closed(log_lam):
        A = Xt.T @ Xt + jnp.exp(log_lam) * jnp.eye(args.dim)
        return 0.5 * jnp.mean((Xv @ jnp.linalg.solve(A, Xt.T @ yt) - yv) ** 2)

    def unrolled(log_lam, n=args.inner_iters):
        lr = 1.0 / (L + jnp.exp(log_lam))
        w = jax.lax.fori_loop(0, n, lambda i, w: w - lr * F(w, log_lam), jnp.zeros(args.dim))
        return 0.5 * jnp.mean((Xv @ w - yv) ** 2)

    g_imp = float(jax.grad(lambda l: val_loss(l, jnp.zeros(args.dim))[0])(log_lam))
    g_cf = float(jax.grad(closed)(log_lam))
    g_unr = float(jax.jit(jax.grad(unrolled))(log_lam))
    print(f"hypergradient at log lam = {float(log_lam):+.3f}: implicit {g_imp:+.6f}, "
          f"closed form {g_cf:+.6f}, unrolled ({args.inner_iters} GD steps) {g_unr:+.6f}")
    print(f"validation loss: first {history[0][0]:.4f} -> last {history[-1][0]:.4f}")

    os.makedirs(args.out, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot([h[0] for h in history])
    ax[0].set(xlabel="outer step", ylabel="validation loss", title="validation loss")
    ax[1].plot([h[1] for h in history])
    ax[1].set(xlabel="outer step", ylabel="log lambda", title="hyperparameter")
    fig.tight_layout()
    path = os.path.join(args.out, "implicit_hyperparams.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
