"""A base install (no TFP, the optional ``tfp`` extra) imports every module of every package,
runs the VAE, and refuses the TFP models with an error naming the extra, on the command line too.

TFP's absence is simulated in a subprocess by a meta-path hook that refuses to import
``tensorflow_probability`` (the installed copy stays untouched).
"""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys

    class NoTFP:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow_probability" or name.startswith("tensorflow_probability."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, NoTFP())

    import contextlib, importlib, io, pkgutil
    import jax, jax.numpy as jnp

    for pkg in ("ppl", "ppl.transforms", "ppl.estimators", "ppl.backends", "ppl.models"):  # every module
        for info in pkgutil.iter_modules(importlib.import_module(pkg).__path__, pkg + "."):
            importlib.import_module(info.name)
    print("imported every module")
    from ppl.distributions import MissingExtraError, tfp_distributions
    from ppl.models import air, cli, conjugate, data, dvae, losses, nets, vae  # noqa: F401
    from ppl.transforms import expectation
    from ppl.transforms import objectives as O

    assert "tensorflow_probability" not in sys.modules
    try:
        tfp_distributions("this check")
        raise SystemExit("tfp_distributions did not refuse")
    except MissingExtraError as e:
        print("direct:", e)

    # the VAE (as the main command builds it) and the conjugate models need no TFP
    x = jnp.ones((1, 64))
    print("conjugate:", float(conjugate.NormalNormal().log_evidence(jnp.zeros(2))) < 0)
    args = cli.build_parser().parse_args(["--latent", "2", "--hidden", "4", "--batch-size", "4"])
    task, E, plan = cli.setup(args)
    print("vae plan rows:", len(plan.rows))

    # the TFP models refuse at trace time, naming the extra
    a = air.AIR(hidden=4)
    pa = a.init_params(jax.random.key(0))
    for name, mdl, gde, pp, xx in (("air", a.model, a.guide, pa, jnp.zeros((1, 256))),
                                   ("dvae", dvae.model, dvae.guide,
                                    dvae.init_params(jax.random.key(0), dvae.DVAEConfig(64, 2, (4,))), x)):
        try:
            expectation(O.elbo(mdl, gde)).plan((pp["theta"], xx), (pp["phi"], xx))
            raise SystemExit(name + " traced without TFP")
        except MissingExtraError as e:
            print(name + ":", e)

    # the main command: one line on stderr, exit code 2, before anything is built
    for model in ("air", "dvae"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli.main(["--model", model, "--out", "/nonexistent/never-written"])
        print(f"cli {model} rc={rc} stderr={err.getvalue()!r}")
''')


def test_base_install_without_tfp():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "imported every module" in out and "conjugate: True" in out and "vae plan rows: 1" in out, out
    for tag in ("direct:", "air:", "dvae:"):
        line = next(ln for ln in out.splitlines() if ln.startswith(tag))
        assert "pip install 'ppl[tfp]'" in line and "TensorFlow Probability" in line, line
    assert "air: AIR (ppl.models.air) needs" in out and "dvae: the discrete VAE (ppl.models.dvae) needs" in out, out
    for model in ("air", "dvae"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"cli {model} "))
        assert f"rc=2 stderr=\"ppl: error: --model {model} needs TensorFlow Probability" in line, line
        assert "pip install 'ppl[tfp]'" in line and line.count("\\n") == 1, line
