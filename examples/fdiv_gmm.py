"""f-divergence distribution matching on a 2-D Gaussian mixture: which divergences drop modes.

The target ``p`` is an equal mixture of ``--modes`` Gaussians (std ``--mode-std``) on a circle of
radius ``--radius``; its density is known, so the ratio ``r = p / q`` is exact. The guide ``q``
is either an equal-weight mixture of ``--components`` diagonal Gaussians (``--guide mixture``,
reparameterized through its components; its weights are fixed, so the pathwise gradient is
exact) or one full-covariance Gaussian (``--guide gaussian``). Each divergence trains the same
initial guide with Adam on ``objectives.f_divergence(target, guide, div, k, normalize=...)``.
A mode is *covered* when at least ``--cover`` of 4000 guide draws lie within 3 target stds of
its centre (``--cover 0.02`` is a sixth of a perfect guide's share at 8 modes).
The paper's claim (Xu et al., f-distill): reverse KL is mode seeking; forward KL and
Jensen-Shannon cover more modes.

    python examples/fdiv_gmm.py --steps 1500 --seeds 3 --out runs/fdiv_gmm
"""
from __future__ import annotations

import argparse
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import optax
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints

import ppl
from ppl.transforms import expectation
from ppl.transforms import objectives as O

DIVS = {"reverse_kl": O.REVERSE_KL, "forward_kl": O.FORWARD_KL, "jensen_shannon": O.JENSEN_SHANNON,
        "hellinger": O.HELLINGER, "jeffreys": O.JEFFREYS, "neyman": O.NEYMAN}


class EqualMixture(nd.Distribution):
    """Equal-weight mixture of diagonal Gaussians, sampled component then ``loc + scale * eps``.

    The component index does not depend on the parameters (the weights are fixed), so
    ``d/dtheta E_q[g] = E_c E_eps[grad g . dx/dtheta]``: the pathwise gradient is exact.
    """

    arg_constraints = {"loc": constraints.real_vector, "log_scale": constraints.real_vector}
    reparametrized_params = ["loc", "log_scale"]
    support = constraints.real_vector
    pytree_data_fields = ("loc", "log_scale")

    def __init__(self, loc, log_scale):
        self.loc, self.log_scale = loc, log_scale
        super().__init__(batch_shape=(), event_shape=loc.shape[-1:])

    @property
    def has_rsample(self):
        return True

    def sample(self, key, sample_shape=()):
        kc, ke = jax.random.split(key)
        c = jax.random.randint(kc, sample_shape, 0, self.loc.shape[0])
        eps = jax.random.normal(ke, sample_shape + self.loc.shape[-1:])
        return self.loc[c] + jnp.exp(self.log_scale[c]) * eps

    def log_prob(self, x):
        comp = jnp.sum(jax.scipy.stats.norm.logpdf(x[..., None, :], self.loc, jnp.exp(self.log_scale)), -1)
        return logsumexp(comp, -1) - math.log(self.loc.shape[0])


def make_target(modes, radius, std):
    ang = 2 * np.pi * np.arange(modes) / modes
    centres = jnp.asarray(np.stack([radius * np.cos(ang), radius * np.sin(ang)], 1), jnp.float32)

    def target():
        ppl.sample("x", EqualMixture(centres, jnp.full(centres.shape, math.log(std))))
    return target, centres


def make_guide(kind):
    if kind == "mixture":
        return lambda phi: ppl.sample("x", EqualMixture(phi["loc"], phi["log_scale"]))
    return lambda phi: ppl.sample("x", nd.MultivariateNormal(phi["loc"], scale_tril=phi["tril"]))


def init_params(kind, components, key):
    if kind == "mixture":
        return {"loc": 1.0 * jax.random.normal(key, (components, 2)),
                "log_scale": jnp.full((components, 2), math.log(1.5))}
    return {"loc": 0.3 * jax.random.normal(key, (2,)), "tril": 1.5 * jnp.eye(2)}


def guide_draws(kind, phi, key, n):
    if kind == "mixture":
        return EqualMixture(phi["loc"], phi["log_scale"]).sample(key, (n,))
    return nd.MultivariateNormal(phi["loc"], scale_tril=jnp.tril(phi["tril"])).sample(key, (n,))


def train(div, args, target, guide, phi0, key):
    E = expectation(O.f_divergence(target, guide, div, args.particles, normalize=args.normalize))
    opt = optax.adam(args.lr)

    def step(carry, k):
        phi, st = carry
        v, g = E.value_and_grad(k, (), (phi,), argnums=1)
        g = jax.tree_util.tree_map(lambda x: -x, g[0])  # maximize -D_f
        if "tril" in phi:  # keep the Cholesky factor lower triangular with a positive diagonal
            g["tril"] = jnp.tril(g["tril"])
        up, st = opt.update(g, st, phi)
        phi = optax.apply_updates(phi, up)
        if "tril" in phi:
            d = jnp.diag(phi["tril"])
            phi["tril"] = phi["tril"] + jnp.diag(jnp.maximum(d, 1e-3) - d)
        return (phi, st), v

    (phi, _), vals = jax.jit(lambda p, ks: jax.lax.scan(step, (p, opt.init(p)), ks))(
        phi0, jax.random.split(key, args.steps))
    return phi, vals


def coverage(x, centres, std, cover):
    d = jnp.linalg.norm(x[:, None, :] - centres[None], axis=-1)
    frac = np.asarray(jnp.mean(d < 3 * std, axis=0))
    return int(np.sum(frac >= cover)), frac


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", type=int, default=8)
    p.add_argument("--radius", type=float, default=4.0)
    p.add_argument("--mode-std", type=float, default=0.4)
    p.add_argument("--guide", choices=["mixture", "gaussian"], default="mixture")
    p.add_argument("--components", type=int, default=8)
    p.add_argument("--divergences", nargs="+", choices=sorted(DIVS),
                   default=["reverse_kl", "forward_kl", "jensen_shannon", "hellinger"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--particles", type=int, default=64)
    p.add_argument("--normalize", action="store_true", help="divide h(r) by its mean over the particles")
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cover", type=float, default=0.02)
    p.add_argument("--out", default="runs/fdiv_gmm")
    args = p.parse_args(argv)
    if args.steps < 1 or args.seeds < 1 or args.particles < 1 or args.modes < 2:
        p.error("--steps, --seeds, --particles must be >= 1 and --modes >= 2")
    if args.normalize and args.particles < 2:
        p.error("--normalize needs --particles >= 2")
    os.makedirs(args.out, exist_ok=True)

    target, centres = make_target(args.modes, args.radius, args.mode_std)
    guide = make_guide(args.guide)
    print(f"target: {args.modes} modes on a circle of radius {args.radius}, std {args.mode_std}; guide: "
          f"{args.guide}" + (f" ({args.components} components)" if args.guide == "mixture" else "")
          + f"; {args.steps} Adam steps, {args.particles} particles, normalize={args.normalize}")
    print(f"{'divergence':<16} {'modes covered (per seed)':<26} {'mean':>5}  {'-D_f (last 100 steps)':>22}")
    results, draws = {}, {}
    for name in args.divergences:
        covered, last = [], []
        for seed in range(args.seeds):
            k_init, k_train, k_draw = jax.random.split(jax.random.key(seed), 3)
            phi0 = init_params(args.guide, args.components, k_init)
            phi, vals = train(DIVS[name], args, target, guide, phi0, k_train)
            x = guide_draws(args.guide, phi, k_draw, 4000)
            n, _ = coverage(x, centres, args.mode_std, args.cover)
            covered.append(n)
            last.append(float(jnp.mean(vals[-100:])))
            if seed == 0:
                draws[name] = np.asarray(x)
        results[name] = covered
        print(f"{name:<16} {str(covered):<26} {np.mean(covered):5.2f}  {np.mean(last):22.4f}")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return results
    fig, axes = plt.subplots(1, len(draws), figsize=(3 * len(draws), 3), squeeze=False)
    for ax, (name, x) in zip(axes[0], draws.items()):
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
        ax.scatter(np.asarray(centres)[:, 0], np.asarray(centres)[:, 1], c="r", marker="x")
        ax.set_title(name)
        ax.set_xlim(-7, 7)
        ax.set_ylim(-7, 7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "fdiv_gmm.png"), dpi=80)
    print(f"wrote {os.path.join(args.out, 'fdiv_gmm.png')}")
    return results


if __name__ == "__main__":
    main()
