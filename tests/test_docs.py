"""The first-model page runs as written and its numbers are right.

Every Python block of docs/first_model.md runs, in order, in one namespace (as a reader would
run them); then the results it prints are checked: the fitted regression posterior against the
exact conjugate posterior, the predictive samples' shapes and spread, the mixture's centres.
"""
import pathlib

import numpy as np

from ._snippets import run_blocks

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_first_model_page_runs_and_is_right():
    ns = run_blocks(ROOT / "docs" / "first_model.md")
    sd = np.sqrt(np.diag(ns["exact_cov"]))
    # regression fitted with minibatches of 100 in the plate: over fit seeds 1-3 the mean is
    # within 0.08 posterior sd and the sds within 4.2% of the exact posterior; bars ~3x
    np.testing.assert_array_less(np.abs(ns["fitted_mean"] - ns["exact_mean"]) / sd, 0.25)
    np.testing.assert_array_less(np.abs(ns["fitted_sd"] / sd - 1), 0.13)
    post, prior = ns["post"], ns["prior"]
    assert {k: v.shape for k, v in post.items()} == {"b": (2000,), "w": (2000, 2), "y": (2000, 2)}
    # predictive sd = sqrt(SIGMA^2 + x' Cov x); 2000 samples: relative sd error ~1.6%, bar 8%
    x1 = np.c_[np.asarray(ns["x_new"], np.float64), np.ones(2)]
    want = np.sqrt(ns["SIGMA"] ** 2 + np.einsum("ni,ij,nj->n", x1, ns["exact_cov"], x1))
    np.testing.assert_allclose(np.asarray(post["y"]).std(0), want, rtol=0.08)
    assert np.all(np.asarray(prior["y"]).std(0) > 2 * want)
    locs = np.sort(np.asarray(ns["mguide"].median(ns["mresult"].params)["locs"]))
    # mixture (N = 200, per-element enumeration): the centres are the two groups' means up to
    # the prior's shrinkage and their posterior sd (0.5 / sqrt(100) = 0.05): bar 0.15
    xm = np.asarray(ns["xm"])
    np.testing.assert_allclose(locs, [xm[:100].mean(), xm[100:].mean()], atol=0.15)
    probs = np.asarray(1 / (1 + np.exp(-np.asarray(ns["mresult"].params["logits"]["z"]))))
    np.testing.assert_array_less(np.abs(probs - np.repeat([0.0, 1.0], 100)), 0.05)  # no point near 0
    assert "Enum (per element)" in str(ns["Em"].plan((ns["xm"],), (ns["mparams"],)))


def test_transforms_readme_autoguide_snippet_runs():
    """The autoguide fragment of transforms/README.md, given what it assumes (a model, data, a
    key and the imports), runs as written."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as nd
    import optax

    import ppl
    from ppl.transforms import AutoNormal, Predictive, expectation
    from ppl.transforms.fit import fit
    from ppl.transforms.objectives import elbo

    from ._snippets import python_blocks

    def model(x, y=None):
        w = ppl.sample("w", nd.Normal(0.0, 1.0).expand((2,)).to_event(1))
        with ppl.plate("data", 64, subsample_size=x.shape[0]):
            return ppl.sample("y", nd.Normal(x @ w, 0.5), obs=y)

    x = jax.random.normal(jax.random.key(0), (64, 2))
    ns = dict(jax=jax, optax=optax, AutoNormal=AutoNormal, Predictive=Predictive, expectation=expectation,
              fit=fit, elbo=elbo, model=model, x=x, y=x @ jnp.array([1.0, -1.0]), x_new=x[:3],
              key=jax.random.key(1))
    (block,) = [b for b in python_blocks(ROOT / "transforms" / "README.md") if "guide = AutoNormal(model)" in b]
    exec(compile(block, "transforms/README.md autoguide block", "exec"), ns)
    np.testing.assert_allclose(ns["guide"].median(ns["r"].params)["w"], [1.0, -1.0], atol=0.1)
