"""The "noisy cone" of Becker et al., PLDI 2024 ("Probabilistic Programming with Programmable
Variational Inference"), Table 4: five objectives, two variational families.

Model::

    x, y ~ N(0, 10);  r2 = x^2 + y^2;  z ~ N(r2, 0.1 + r2 / 100);  observe z = 5

The posterior is a thin noisy ring of radius sqrt(5). Two guides:

- naive: mean-field normals on (x, y), trained by the ELBO and by IWELBO (n = 5);
- expressive: an auxiliary ``u ~ Uniform(0, 1)``, ``theta = 2 pi u``,
  ``x ~ N(sqrt(z) cos theta, exp(ls1))``, ``y ~ N(sqrt(z) sin theta, exp(ls2))``, marginalized
  over ``u`` by approximate marginalization (``Marginal`` inside ``hvi``/``iwhvi``/``diwhvi``)
  with the reverse model ``r(u | x, y) = Uniform(0, 1)`` (fixed, as in the paper's artifact,
  where the marginal's density estimator is SIR with the prior of ``u`` as proposal).
  HVI uses the one auxiliary draw of the guide; IWHVI uses M particles in total (the guide's
  draw and M - 1 draws of r; the artifact's ``sir(M)``); DIWHVI is an IWAE over N outer
  particles of the IWHVI guide.

Training follows the artifact: plain SGD ascent, learning rate 1e-3, each step the mean of 64
independent gradient estimates (ADEV, reparameterized); the whole run is one jitted
``lax.scan``, vmapped over seeds. Each trained guide's objective is then evaluated on
``--eval-samples`` independent estimates. Printed: ours (mean over seeds +- standard error
over seeds) beside the paper's numbers.

    python examples/noisy_cone.py                      # the paper's setup (5000 steps, 5000 samples)
    python examples/noisy_cone.py --steps 20 --seeds 1 --eval-samples 100 --only ELBO,HVI  # smoke test
"""
from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd

import ppl
from ppl.transforms import expectation
from ppl.transforms import objectives as O

Z_OBS = 5.0

PAPER = {"ELBO": -8.08, "IWELBO (n=5)": -7.79, "HVI": -9.75, "IWHVI (m=5)": -8.18, "DIWHVI (n=5, m=5)": -7.33}


def model(z):
    x = ppl.sample("x", nd.Normal(0.0, 10.0))
    y = ppl.sample("y", nd.Normal(0.0, 10.0))
    r2 = x**2 + y**2
    ppl.sample("z", nd.Normal(r2, 0.1 + r2 / 100.0), obs=z)


def naive_guide(phi):
    """phi = (mu1, mu2, log_sigma1, log_sigma2)."""
    ppl.sample("x", nd.Normal(phi[0], jnp.exp(phi[2])))
    ppl.sample("y", nd.Normal(phi[1], jnp.exp(phi[3])))


def expressive_guide(phi):
    """phi = (log_sigma1, log_sigma2); the auxiliary angle u is marginalized by the objectives."""
    u = ppl.sample("u", nd.Uniform(0.0, 1.0))
    theta = 2.0 * jnp.pi * u
    ppl.sample("x", nd.Normal(jnp.sqrt(Z_OBS) * jnp.cos(theta), jnp.exp(phi[0])))
    ppl.sample("y", nd.Normal(jnp.sqrt(Z_OBS) * jnp.sin(theta), jnp.exp(phi[1])))


def reverse(xy, phi):
    """r(u | x, y): the prior of u (the artifact's choice)."""
    ppl.sample("u", nd.Uniform(0.0, 1.0))


def experiments(n, m):
    keep = ["x", "y"]
    return {
        "ELBO": (O.elbo(model, naive_guide), jnp.array([0.0, 0.0, 1.0, 1.0])),
        f"IWELBO (n={n})": (O.iwae(model, naive_guide, n), jnp.array([3.0, 0.0, 1.0, 1.0])),
        "HVI": (O.hvi(model, expressive_guide, keep, reverse), jnp.zeros(2)),
        f"IWHVI (m={m})": (O.iwhvi(model, expressive_guide, keep, reverse, m - 1), jnp.zeros(2)),
        f"DIWHVI (n={n}, m={m})": (O.diwhvi(model, expressive_guide, keep, reverse, n, m - 1), jnp.zeros(2)),
    }


def train_and_evaluate(objective, phi0, seeds, steps, lr, batch, eval_samples):
    """Per seed: SGD ascent for ``steps`` steps, then ``eval_samples`` estimates of the objective."""
    E = expectation(objective)
    margs = (jnp.float32(Z_OBS),)

    def grad_mean(key, phi):
        keys = jax.random.split(key, batch)
        return jnp.mean(jax.vmap(lambda k: E.grad(k, margs, (phi,), argnums=1)[0])(keys), axis=0)

    def one_seed(key):
        train_key, eval_key = jax.random.split(key)

        def step(phi, t):
            return phi + lr * grad_mean(jax.random.fold_in(train_key, t), phi), None

        phi, _ = jax.lax.scan(step, phi0, jnp.arange(steps))
        values = jax.vmap(lambda k: E.estimate(k, margs, (phi,)))(jax.random.split(eval_key, eval_samples))
        return phi, values

    keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
    return jax.jit(jax.vmap(one_seed))(keys)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5000, help="SGD steps (paper: 5000)")
    ap.add_argument("--seeds", type=int, default=5, help="independent training runs")
    ap.add_argument("--eval-samples", type=int, default=5000, help="estimates per evaluation (paper: 5000)")
    ap.add_argument("--batch", type=int, default=64, help="gradient estimates averaged per step (paper: 64)")
    ap.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (paper: 1e-3)")
    ap.add_argument("-n", type=int, default=5, help="outer particles of IWELBO and DIWHVI (paper: 5)")
    ap.add_argument("-m", type=int, default=5, help="particles of the marginal's estimator in IWHVI/DIWHVI (paper: 5)")
    ap.add_argument("--only", default="", help="comma-separated objectives to run, e.g. ELBO,HVI (default: all)")
    a = ap.parse_args(argv)
    for name, v in (("--steps", a.steps), ("--seeds", a.seeds), ("--eval-samples", a.eval_samples),
                    ("--batch", a.batch), ("-n", a.n), ("-m", a.m)):
        if v < 1:
            ap.error(f"{name} must be >= 1, got {v}")

    print(f"noisy cone: z = {Z_OBS}; {a.steps} SGD steps (lr {a.lr}, {a.batch} gradient estimates/step), "
          f"{a.seeds} seed(s), {a.eval_samples} evaluation samples")
    header = f"{'objective':<20} {'ours':>18} {'paper':>8}   trained parameters (seed 0)"
    print(header)
    print("-" * len(header))
    exps = list(zip(experiments(a.n, a.m).items(), PAPER.values()))
    only = [o.strip() for o in a.only.split(",") if o.strip()]
    unknown = [o for o in only if not any(name.split(" ")[0] == o for (name, _), _ in exps)]
    if unknown:
        ap.error(f"--only: unknown objective(s) {unknown}; choose from ELBO, IWELBO, HVI, IWHVI, DIWHVI")
    t_all = time.time()
    for (name, (objective, phi0)), paper in exps:
        if only and name.split(" ")[0] not in only:
            continue
        t0 = time.time()
        phis, values = train_and_evaluate(objective, phi0, a.seeds, a.steps, a.lr, a.batch, a.eval_samples)
        per_seed = np.asarray(values, np.float64).mean(axis=1)
        if not np.all(np.isfinite(per_seed)):
            raise FloatingPointError(f"{name}: non-finite objective after training ({per_seed})")
        mean = per_seed.mean()
        se = per_seed.std(ddof=1) / math.sqrt(a.seeds) if a.seeds > 1 else float("nan")
        ours = f"{mean:8.3f} +- {se:6.3f}" if a.seeds > 1 else f"{mean:8.3f}"
        params = np.array2string(np.asarray(phis[0]), precision=3, separator=", ")
        print(f"{name:<20} {ours:>18} {paper:>8.2f}   {params}  ({time.time() - t0:.0f} s)", flush=True)
    print(f"total {time.time() - t_all:.0f} s. Ours: mean over seeds of the mean of {a.eval_samples} "
          "estimates, +- the standard error over seeds.")


if __name__ == "__main__":
    main()
