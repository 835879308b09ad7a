"""The shipped models pass strict mode with the main command's objectives and estimators.

VAE (Reparam), discrete VAE (score function) and AIR (score-function presence, Reparam where and
what; and ``--air-hybrid``'s Enum/MVD presence), tiny networks: every row "yes". AIR has no
comparison on its continuous choices: presence multiplies (``alive * present``) and the spatial
transformer's bilinear tent weights are continuous. ``--strict`` refuses ``iwae-stl`` (K > 1),
and ``iwae-dreg`` with a discrete guide is refused always, naming the objective and the site.
"""
import jax
import jax.numpy as jnp
import pytest

from ppl.models import air, cli, dvae, vae

X = jnp.full((1, 64), 0.3)


def built(model, argv=()):
    """``(E, model_args, guide_args)`` as the main command builds them, on a tiny network."""
    args = cli.build_parser().parse_args(["--model", model, "--particles", "2", "--strict", *argv])
    mapping = cli._estimators(args.estimator, args.model, args.air_hybrid)
    if model == "vae":
        p = vae.init_params(jax.random.key(0), vae.VAEConfig(data_dim=64, latent_dim=2, hidden=(4,)))
        mg, x, ma, ga = (vae.model, vae.guide), X, vae.model_args, vae.guide_args
    elif model == "dvae":
        p = dvae.init_params(jax.random.key(0), dvae.DVAEConfig(data_dim=64, latent_dim=2, hidden=(4,)))
        mg, x, ma, ga = (dvae.model, dvae.guide), X, dvae.model_args, dvae.guide_args
    else:
        a = air.AIR(hidden=4)
        p = a.init_params(jax.random.key(0))
        mg, x, ma, ga = (a.model, a.guide), jnp.full((1, a.canvas**2), 0.3), air.model_args, air.guide_args
    return cli._objective(args, *mg, mapping), ma(p, x), ga(p, x), p, x


@pytest.mark.parametrize("model, argv", [("vae", ()), ("dvae", ()), ("air", ()), ("air", ("--air-hybrid",)),
                                         ("vae", ("--objective", "iwae-dreg")), ("dvae", ("--objective", "vimco"))],
                         ids=lambda a: " ".join(a) if isinstance(a, tuple) else a)
def test_shipped_models_pass_strict_mode(model, argv):
    E, ma, ga, _, _ = built(model, argv)
    plan = E.plan(ma, ga)
    assert E.strict and plan.unbiased and all(r["verdict"] == "yes" for r in plan.rows), str(plan)


def test_the_strict_gradient_traces():
    """The gradient runs strict mode's check at trace time, and passes."""
    E, ma, ga, p, x = built("dvae")
    jax.eval_shape(lambda p: E.grad(jax.random.key(1), dvae.model_args(p, x), dvae.guide_args(p, x), argnums=1), p)


@pytest.mark.parametrize("model, argv, message", [
    ("vae", ("--objective", "iwae-stl"), "marks itself biased: iwae_stl with K=2"),
    ("dvae", ("--objective", "iwae-dreg"), "iwae_dreg: random choice 'z' uses ScoreFunction"),
])
def test_strict_refuses_what_is_not_proven(model, argv, message):
    E, ma, ga, p, x = built(model, argv)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(lambda g: E.grad(jax.random.key(1), ma, g, argnums=1), ga)


def test_the_main_command_refuses_before_training():
    with pytest.raises(cli.UsageError, match="--strict: the gradient estimate is not proven unbiased"):
        cli.setup(cli.build_parser().parse_args(["--model", "vae", "--objective", "iwae-stl", "--hidden", "4",
                                                 "--latent", "2", "--strict"]))
