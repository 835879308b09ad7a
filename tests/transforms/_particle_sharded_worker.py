"""Particle-parallel objectives (``particle_axis=``) and CBO particles on 8 simulated CPU devices, in its own
process (the parent sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8``).

usage: python _particle_sharded_worker.py   (prints one JSON object; test_particle_sharded.py checks it)

Each objective with K = 16 particles is estimated with its gradient, with the same key, unsplit
and with the particles split over an ``Auto`` mesh axis of 8 devices (an
``Explicit`` one from ``jax.make_mesh`` is refused); then ``fit`` on a 4x2 mesh (``data`` x
``particles``) against the one-device fit.

Tolerance (float reduction order). Random draws do not depend on the placement, so the split
and unsplit runs compute the same per-particle terms with the same operations (each device runs
its block of the vmapped particles) and differ in the order of the additions across particles
(per-device partial sums, then an all-reduce), plus, at worst, the order of the D = 3
per-dimension terms within a particle. The estimate and each gradient component are sums over
the K particles of a particle's D per-dimension log-density terms (or their derivatives in a
parameter) times a weight of at most 1 (a normalized importance weight, its square, 1/K, or
VIMCO's leave-one-out signal, a difference of two log-mean-exps of such terms); any order of a
sum of m terms is within (m - 1) eps sum |terms| of the exact one, for each of the two runs, so
they differ by at most 2 eps ((K - 1) K + (D - 1)) D A, with A a bound on one term's magnitude:
the largest |per-dimension term| (value) or |its derivative in a parameter| (gradient), measured
on 4096 independent guide draws at the same parameters and doubled. A negative control (IWAE
with one device's two particles dropped, same key) must differ by more than 10 tolerances.
"""
import json

import jax

from ppl.config import use_compilation_cache

use_compilation_cache()

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as nd  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import ppl  # noqa: E402
from ppl.transforms import expectation  # noqa: E402
from ppl.transforms import objectives as O  # noqa: E402
from ppl.transforms.fit import fit  # noqa: E402

K, D, SIGMA = 16, 3, 0.5
Y = jnp.array([0.3, -0.2, 1.0])
PHI = {"loc": jnp.array([0.1, -0.4, 0.5]), "s": jnp.array([-0.5, 0.0, 0.3])}
KEY = jax.random.key(7)


def model(y):
    z = ppl.sample("z", nd.Normal(jnp.zeros(D), 1.0).to_event(1))
    ppl.sample("y", nd.Normal(z, SIGMA).to_event(1), obs=y)


def guide(phi):
    ppl.sample("z", nd.Normal(phi["loc"], jax.nn.softplus(phi["s"])).to_event(1))


OBJECTIVES = {
    "iwae": lambda **kw: O.iwae(model, guide, K, **kw),
    "iwae_stl": lambda **kw: O.iwae_stl(model, guide, K, **kw),
    "iwae_dreg": lambda **kw: O.iwae_dreg(model, guide, K, **kw),
    "vimco": lambda **kw: O.vimco(model, guide, K, **kw),
    "renyi": lambda **kw: O.renyi(model, guide, K, 0.5, **kw),
    "rws_wake_p": lambda **kw: O.rws_wake_p(model, guide, K, **kw),
    "rws_wake_q": lambda **kw: O.rws_wake_q(model, guide, K, **kw),
    "f_divergence": lambda **kw: O.f_divergence(model, guide, O.REVERSE_KL, K, **kw),
}


def value_and_grad(objective, key=KEY, mesh=None):
    E = expectation(objective)
    f = jax.jit(jax.value_and_grad(lambda p, k: E.estimate(k, (Y,), (p,))))
    if mesh is None:
        v, g = f(PHI, key)
    else:
        with jax.set_mesh(mesh):
            v, g = f(PHI, key)
    return float(v), np.concatenate([np.ravel(g["loc"]), np.ravel(g["s"])])


def term_bounds():
    """A: the largest |per-dimension log-density term| and |its derivative in a parameter|
    over 4096 independent guide draws (reparameterized), doubled."""
    eps_ = jax.random.normal(jax.random.key(99), (4096, D))

    def terms(phi, e):
        scale = jax.nn.softplus(phi["s"])
        z = phi["loc"] + scale * e
        return (nd.Normal(0.0, 1.0).log_prob(z) + nd.Normal(z, SIGMA).log_prob(Y)
                - nd.Normal(phi["loc"], scale).log_prob(z))

    vals = jax.vmap(lambda e: terms(PHI, e))(eps_)
    jac = jax.vmap(lambda e: jax.jacobian(terms)(PHI, e))(eps_)
    grad_max = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(jac))
    return 2 * float(jnp.max(jnp.abs(vals))), 2 * grad_max


def cbo_split(mesh):
    """CBO's N = 64 particles split over 8 devices: one step from the same state and key, split and
    unsplit. Only the consensus's sums over particles change order (energies, increments and the
    update are elementwise): |c_num - exact| <= (N - 1) eps sum_i w_i |x_i| and the same for
    sum_i w_i, so for each run |dc| <= 2 (N - 1) eps max |x| (weights normalized, plus a rounding
    of the division), and the two runs differ by twice that; the moved particles
    x - lam dt (x - c) + sigma sqrt(dt) ||x - c|| xi differ by at most
    |dc| (lam dt + sigma sqrt(dt) sqrt(d) max |xi|) per coordinate (xi recovered from the unsplit
    step). Then ``minimize`` for 30 steps under the mesh, against the unsplit run."""
    from ppl.transforms.cbo import CBO, CBOConfig, Termination, consensus

    n, d = 64, 4
    cfg = CBOConfig(dt=0.05, sigma=0.8, alpha=5.0, lam=1.0)
    f = lambda x: jnp.sum(x**2) + 0.5 * jnp.sum(1 - jnp.cos(3 * x))
    x0 = 2.0 * jax.random.normal(jax.random.key(21), (n, d))
    plain, split = CBO(f, cfg), CBO(f, cfg, particle_axis="particles")
    k0, k1 = jax.random.split(jax.random.key(22))
    s0 = jax.jit(plain.init)(k0, x0)
    a, _ = jax.jit(plain.step)(k1, s0)
    with jax.set_mesh(mesh):
        s0s = jax.jit(split.init)(k0, x0)
        b, _ = jax.jit(split.step)(k1, s0s)
        seen = []

        def probe(key, x):
            e = split._energies(key, x)
            jax.debug.inspect_array_sharding(e, callback=lambda s: seen.append(list(s.shard_shape((n,)))))
            return e
        jax.jit(probe)(k1, x0)
        term = Termination(max_steps=30)
        m_split, _ = split.minimize(jax.random.key(23), x0, term)
    m_plain, _ = plain.minimize(jax.random.key(23), x0, term)
    eps = float(np.finfo(np.float32).eps)
    x, c = np.asarray(s0.x), np.asarray(a.consensus)
    diff_xc = np.linalg.norm(x - c, axis=1, keepdims=True)
    moved = np.asarray(a.x) - x + cfg.lam * cfg.dt * (x - c)
    xi = np.max(np.abs(moved / (cfg.sigma * np.sqrt(cfg.dt) * diff_xc)))
    dc = 2 * 2 * (n - 1) * eps * np.max(np.abs(x)) * 1.01
    return {"init_energy_diff": float(np.max(np.abs(np.asarray(s0.energy) - np.asarray(s0s.energy)))),
            "consensus_diff": float(np.max(np.abs(np.asarray(a.consensus) - np.asarray(b.consensus)))),
            "x_diff": float(np.max(np.abs(np.asarray(a.x) - np.asarray(b.x)))),
            "tol_consensus": float(dc),
            "tol_x": float(dc * (cfg.lam * cfg.dt + cfg.sigma * np.sqrt(cfg.dt) * np.sqrt(d) * xi)),
            "energy_shard_shape": seen[0] if seen else None,
            "minimize_steps": [int(m_plain.step), int(m_split.step)],
            "minimize_best": [float(m_plain.best_energy), float(m_split.best_energy)],
            "start_best": float(s0.best_energy),
            # negative control: the consensus without one device's 8 particles
            "negative_consensus": float(np.max(np.abs(np.asarray(consensus(s0.x[: n - n // 8], s0.energy[: n - n // 8],
                                                                            s0.alpha)) - np.asarray(s0.consensus))))}


def main():
    devs = jax.devices()
    auto8 = jax.make_mesh((8,), ("particles",), axis_types=(AxisType.Auto,))
    explicit8 = jax.make_mesh((8,), ("particles",))  # jax.make_mesh's default: Explicit axes
    eps = float(np.finfo(np.float32).eps)
    a_value, a_grad = term_bounds()
    factor = 2 * eps * ((K - 1) * K + (D - 1)) * D
    out = {"devices": len(devs), "tol_value": factor * a_value, "tol_grad": factor * a_grad, "value": {},
           "grad": {}, "specs": {}}
    for name, make in OBJECTIVES.items():
        v0, g0 = value_and_grad(make())
        v, g = value_and_grad(make(particle_axis="particles"), mesh=auto8)
        out["value"][name] = abs(v - v0)
        out["grad"][name] = float(np.max(np.abs(g - g0)))
    # negative control: the last device's K/8 particles dropped (IWAE over 14 particles, same key)
    v_neg, g_neg = value_and_grad(O.iwae(model, guide, K - K // 8))
    v0, g0 = value_and_grad(OBJECTIVES["iwae"]())
    out["negative_control"] = {"value": abs(v_neg - v0), "grad": float(np.max(np.abs(g_neg - g0)))}

    # the particles' placement as the partitioner sees it inside the objective
    seen = []

    def loud(model_args, guide_args):
        _, lw = O._particles(model, guide, K, model_args, guide_args, axis="particles")
        jax.debug.inspect_array_sharding(lw, callback=lambda s: seen.append(list(s.shard_shape((K,)))))
        return jax.scipy.special.logsumexp(lw)

    E = expectation(loud)
    with jax.set_mesh(auto8):
        jax.jit(jax.grad(lambda p, k: E.estimate(k, (Y,), (p,))))(PHI, KEY)
    out["specs"]["log_weights_shard_shape"] = seen[0] if seen else None

    # in fit: a 4x2 mesh, minibatches on "data", particles on "particles"
    x = jnp.arange(64.0)[:, None] / 64 + jnp.zeros((64, D))
    data = {"y": Y + 0.3 * jnp.sin(x)}

    def fit_loss(obj):  # a sum of one IWAE per example of the minibatch (each its own latent)
        E = expectation(obj)

        def loss(k, p, b):
            keys = jax.random.split(k, b["y"].shape[0])
            return -jnp.sum(jax.vmap(lambda kk, y: E.estimate(kk, (y,), (p,)))(keys, b["y"]))
        return loss

    mesh42 = jax.make_mesh((4, 2), ("data", "particles"))
    B, T, LR = 8, 20, 1e-3
    kw = dict(key=KEY, num_steps=T, data=data, batch_size=B, chunk=10, progress=False)
    r1 = fit(fit_loss(O.iwae(model, guide, K)), optax.sgd(LR), PHI, **kw)
    r8 = fit(fit_loss(O.iwae(model, guide, K, particle_axis="particles")), optax.sgd(LR), PHI, mesh=mesh42,
             data_axis="data", **kw)
    flat = lambda p: np.concatenate([np.ravel(p["loc"]), np.ravel(p["s"])])
    # T SGD steps: each step's gradient is a sum of B estimates, each within tol_grad (the examples
    # are Y plus at most 0.3, so A is taken as measured at Y: an approximation), plus the sum's own
    # reordering (within (B - 1) eps B A_grad, far smaller); the update map's Lipschitz constant is
    # at most 1 + lr x curvature (about 1/SIGMA^2 + 1 per example), so T steps grow it by
    # at most (1 + LR B 5)^T
    growth = (1 + LR * B * (1 / SIGMA**2 + 1)) ** T
    out["fit"] = {"diff": float(np.max(np.abs(flat(jax.tree.map(np.asarray, r8.params)) - flat(r1.params)))),
                  "tol": T * LR * B * out["tol_grad"] * growth, "steps": int(r8.state.step)}

    # a NaN example: the particle-split fit stops with NonFiniteError at the same step as one device
    bad = {"y": data["y"].at[13].set(jnp.nan)}
    stops = []
    for obj, mesh in ((O.iwae(model, guide, K), None), (O.iwae(model, guide, K, particle_axis="particles"), mesh42)):
        try:
            fit(fit_loss(obj), optax.sgd(LR), PHI, **dict(kw, data=bad), **(dict(mesh=mesh, data_axis="data")
                                                                            if mesh is not None else {}))
            stops.append(None)
        except FloatingPointError as e:
            stops.append(str(e).split(" (loss")[0])
    out["nonfinite"] = stops

    out["cbo"] = cbo_split(auto8)

    def refuse(f):
        try:
            f()
        except ValueError as e:
            return str(e)
        return None

    out["errors"] = {
        "no_mesh": refuse(lambda: value_and_grad(O.iwae(model, guide, K, particle_axis="particles"))),
        "no_axis": refuse(lambda: value_and_grad(O.iwae(model, guide, K, particle_axis="chains"), mesh=auto8)),
        "indivisible": refuse(lambda: value_and_grad(O.iwae(model, guide, 12, particle_axis="particles"),
                                                     mesh=auto8)),
        "explicit": refuse(lambda: value_and_grad(O.iwae(model, guide, K, particle_axis="particles"),
                                                  mesh=explicit8)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
