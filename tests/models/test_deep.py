"""Deep generative models (VAE, discrete VAE, AIR), the main command and the examples."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ppl
from ppl.models import data
from ppl.models.losses import make_loss
from ppl.transforms import expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import fit

from .._stats import Z

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _run(args, tmp_path, timeout=600, **env_vars):
    env = dict(os.environ, MPLBACKEND="Agg", **env_vars)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


# --- VAE -----------------------------------------------------------------------------------------

def test_vae_shapes_and_plan():
    from ppl.models import vae

    cfg = vae.VAEConfig(data_dim=64, latent_dim=3, hidden=(16,))
    p = vae.init_params(jax.random.key(0), cfg)
    x = jnp.ones((5, 64))
    tr = ppl.simulate(vae.guide)(jax.random.key(1), p["phi"], x)
    assert tr.choices["z"].shape == (5, 3) and np.isfinite(float(tr.score))
    lp, logits = ppl.assess(vae.model)(tr.choices, p["theta"], x)
    assert logits.shape == (5, 64) and np.isfinite(float(lp))
    plan = expectation(O.elbo(vae.model, vae.guide)).plan((p["theta"], x), (p["phi"], x))
    assert [r["estimator"] for r in plan.rows] == ["Reparam"] and plan.unbiased
    ll = vae.log_likelihood(jax.random.key(2), p, x, num_particles=20, batch_size=2, particle_chunk=10)
    assert ll.shape == (5,) and bool(jnp.all(jnp.isfinite(ll)))


def test_log_likelihood_announces_itself(capsys):
    """Long evaluations show a bar naming the estimate, its K and the number of images; the
    blocks of the discrete VAE's estimate give the same kind of numbers as one block."""
    from ppl.models import dvae, vae

    p = vae.init_params(jax.random.key(0), vae.VAEConfig(data_dim=64, latent_dim=3, hidden=(16,)))
    x = jnp.ones((5, 64))
    vae.log_likelihood(jax.random.key(2), p, x, num_particles=20, batch_size=2, particle_chunk=10, progress=True)
    assert "log-likelihood, K = 20, 5 images" in capsys.readouterr().err
    vae.log_likelihood(jax.random.key(2), p, x, num_particles=20, batch_size=2, particle_chunk=10, progress=False)
    assert capsys.readouterr().err == ""
    q = dvae.init_params(jax.random.key(0), dvae.DVAEConfig(data_dim=64, latent_dim=3, hidden=(16,)))
    one = dvae.log_likelihood(jax.random.key(2), q, x, 1000, progress=True)
    assert "log-likelihood, K = 1,000, 5 images" in capsys.readouterr().err
    blocks = dvae.log_likelihood(jax.random.key(2), q, x, 1000, batch_size=2)
    assert blocks.shape == one.shape == (5,)
    # other draws, the same estimand: the two K = 1000 estimates differ by draw noise only. Its sd
    # per image, from 8 more keys, bounds their difference at the suite's z (sqrt(2): two
    # independent estimates); a block dropped or double-counted moves an estimate by log 2.
    sd = np.std([dvae.log_likelihood(jax.random.key(10 + i), q, x, 1000, progress=False) for i in range(8)],
                axis=0, ddof=1)
    assert np.all(np.abs(blocks - one) <= Z * np.sqrt(2) * sd), (blocks - one, sd)


def test_learning_curve_skips_an_empty_history(tmp_path):
    from ppl.models import _plots

    assert _plots.learning_curve(str(tmp_path / "a.png"), []) is None and not (tmp_path / "a.png").exists()
    assert _plots.learning_curve(str(tmp_path / "b.png"), np.linspace(3, 1, 200)) == str(tmp_path / "b.png")


def test_vae_elbo_improves_on_digits(digits):
    """300 Adam steps raise the test ELBO by at least 2 nats per image (about 4 in practice)."""
    from ppl.models import vae

    cfg = vae.VAEConfig(data_dim=64, latent_dim=8, hidden=(64,))
    p0 = vae.init_params(jax.random.key(0), cfg, data_mean=digits.x_train.mean(0))
    E = expectation(O.elbo(vae.model, vae.guide))

    def loss(key, p, batch):
        k1, k2 = jax.random.split(key)
        xb = data.binarize(k1, batch)
        return -E.estimate(k2, (p["theta"], xb), (p["phi"], xb)) / xb.shape[0]

    res = fit(loss, optax.adam(3e-3), p0, key=jax.random.key(1), num_steps=300, data=jnp.asarray(digits.x_train),
              batch_size=64, chunk=300, progress=False)
    xt = jnp.asarray(data.binarize_static(digits.x_test))
    before = float(vae.elbo(jax.random.key(2), p0, xt))
    after = float(vae.elbo(jax.random.key(2), res.params, xt))
    assert np.all(np.isfinite(res.history))
    assert after > before + 2.0, (before, after)


# --- discrete VAE --------------------------------------------------------------------------------

def test_dvae_trains_with_three_estimators(digits):
    from ppl.estimators import DisARM, LeaveOneOut
    from ppl.models import dvae

    cfg = dvae.DVAEConfig(data_dim=64, latent_dim=4, hidden=(16,))
    p0 = dvae.init_params(jax.random.key(0), cfg, data_mean=digits.x_train.mean(0))
    ests = [None, {"z": DisARM()}, {"z": LeaveOneOut(num_samples=2)}]  # None: the default ScoreFunction
    for est in ests:
        E = expectation(O.elbo(dvae.model, dvae.guide), estimators=est)
        res = fit(make_loss(E, binarized=True), optax.adam(1e-2), p0, key=jax.random.key(1), num_steps=20,
                  data=jnp.asarray(digits.x_train[:256]), batch_size=8, chunk=20, progress=False)
        assert np.all(np.isfinite(res.history)), est
        assert np.isfinite(float(dvae.elbo(jax.random.key(2), res.params, jnp.asarray(digits.x_test[:32]).round())))


def test_dvae_rejects_reparam_on_bernoulli_latents():
    from ppl.models import dvae
    from ppl.transforms import EstimatorError, Reparam

    p = dvae.init_params(jax.random.key(0), dvae.DVAEConfig(data_dim=64, latent_dim=3, hidden=(8,)))
    x = jnp.ones((1, 64))
    E = expectation(O.elbo(dvae.model, dvae.guide), estimators={"z": Reparam()})
    with pytest.raises(EstimatorError, match="'z'"):
        E.plan((p["theta"], x), (p["phi"], x))


# --- AIR -----------------------------------------------------------------------------------------

def _bilinear_by_neighbours(img, py, px):
    """Reference: read the four neighbours of each sampling point (pixels outside weigh 0)."""
    h, w = img.shape
    py, px = py[:, None], px[None, :]
    y0, x0 = jnp.floor(py), jnp.floor(px)
    out = 0.0
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            wgt = (1 - jnp.abs(py - yy)) * (1 - jnp.abs(px - xx))
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            val = img[jnp.clip(yy, 0, h - 1).astype(jnp.int32), jnp.clip(xx, 0, w - 1).astype(jnp.int32)]
            out = out + jnp.where(inside, wgt * val, 0.0)
    return out


def test_air_transformer_matches_neighbour_sampling_values_and_gradients():
    from ppl.models import air

    img = jax.random.uniform(jax.random.key(0), (8, 8))
    canvas = jax.random.uniform(jax.random.key(1), (16, 16))
    where = jnp.array([0.7, -0.9, 1.3])  # scale 0.57, shifted so the glimpse leaves the canvas

    def place_ref(g, w):
        s, tx, ty = air._affine(w)
        px = ((air._grid(16) - tx) / s + 1.0) * 4 - 0.5
        py = ((air._grid(16) - ty) / s + 1.0) * 4 - 0.5
        return _bilinear_by_neighbours(g, py, px)

    def extract_ref(c, w):
        s, tx, ty = air._affine(w)
        px = (air._grid(8) * s + tx + 1.0) * 8 - 0.5
        py = (air._grid(8) * s + ty + 1.0) * 8 - 0.5
        return _bilinear_by_neighbours(c, py, px)

    np.testing.assert_allclose(air.place(img, where, 16), place_ref(img, where), atol=1e-6)
    np.testing.assert_allclose(air.extract(canvas, where, 8), extract_ref(canvas, where), atol=1e-6)
    r = jax.random.normal(jax.random.key(2), (16, 16))
    for ours, ref, arg in ((lambda g, w: air.place(g, w, 16), place_ref, img),
                           (lambda c, w: air.extract(c, w, 8), extract_ref, canvas)):
        weight = r[:ours(arg, where).shape[0], :ours(arg, where).shape[1]]
        g1 = jax.grad(lambda a, w: jnp.sum(weight * ours(a, w)), argnums=(0, 1))(arg, where)
        g2 = jax.grad(lambda a, w: jnp.sum(weight * ref(a, w)), argnums=(0, 1))(arg, where)
        for a, b in zip(g1, g2):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("rnn_layers", [1, 2])
def test_air_guide_density_matches_the_concatenated_recurrent_layer(digits, rnn_layers):
    """The guide computes the canvas' share of its recurrent layer once; log q must equal the
    textbook step ``h = tanh(mlp([x, h, where, what, alive]))`` (what bench/_air_pyro.py writes),
    with ``alive`` the product of the earlier presences (the published guide's previous ``z_pres``)."""
    from jax.scipy.stats import norm

    from ppl.models import air
    from ppl.models.nets import dense_apply, mlp_apply, mlp_init

    a = air.AIR(hidden=16)
    x, _ = a.make_canvases(jax.random.key(0), digits.images(digits.x_train), 2)
    phi = a.init_params(jax.random.key(1))["phi"]
    if rnn_layers == 2:  # init_params makes one layer; a deeper recurrent MLP must work too
        phi["rnn"] = mlp_init(jax.random.key(3), [256 + 16 + 3 + 6 + 1, 16, 16])
    tr = ppl.simulate(a.guide)(jax.random.key(2), phi, x)
    h, where, what, alive = jnp.zeros((2, 16)), jnp.zeros((2, 3)), jnp.zeros((2, 6)), jnp.ones((2, 1))
    logq = jnp.zeros(())
    for pres, w, z in tr.retval:
        h = jnp.tanh(mlp_apply(phi["rnn"], jnp.concatenate([x, h, where, what, alive], -1)))
        logit = dense_apply(phi["pres"], h)[:, 0] + 1.0
        logq += jnp.sum(pres * jax.nn.log_sigmoid(logit) + (1 - pres) * jax.nn.log_sigmoid(-logit))
        wl, ws = jnp.split(dense_apply(phi["where"], h), 2, -1)
        logq += jnp.sum(norm.logpdf(w, wl, jax.nn.softplus(ws - 1.0) + 1e-3))
        glimpse = jax.vmap(air.extract, (0, 0, None))(x.reshape(2, 16, 16), w, 8).reshape(2, -1)
        ql, qs = jnp.split(mlp_apply(phi["what"], jnp.concatenate([glimpse, h], -1)), 2, -1)
        logq += jnp.sum(norm.logpdf(z, ql, jax.nn.softplus(qs + 0.5413) + 1e-3))
        where, what, alive = w, z, alive * pres[:, None]
    np.testing.assert_allclose(tr.score, logq, rtol=1e-5)


def test_air_evaluation_uses_the_config_and_rejects_a_mismatch(digits):
    from ppl.models import air

    a = air.AIR(hidden=16, max_steps=2, prior_present=0.1)
    x, _ = a.make_canvases(jax.random.key(0), digits.images(digits.x_train), 8)
    p = a.init_params(jax.random.key(1))
    lw, n, where = a.infer(jax.random.key(2), p, x)
    assert where.shape == (8, 2, 3) and int(jnp.max(n)) <= 2
    # the same draws scored by the config's model: log p(x, z) - log q(z) with its own prior
    mdl, gde = a.model, a.guide
    k = jax.random.split(jax.random.key(2), 8)[0]
    tr = ppl.simulate(gde)(k, p["phi"], x[:1])
    lp, _ = ppl.assess(mdl)(tr.choices, p["theta"], x[:1])
    np.testing.assert_allclose(lw[0], lp - tr.score, rtol=1e-5)
    with pytest.raises(ValueError, match="hidden"):
        air.AIR().elbo(jax.random.key(2), p, x)  # default config: hidden 64, the parameters have 16
    with pytest.raises(ValueError, match="hidden"):
        make_loss(expectation(O.elbo(air.AIR().model, air.AIR().guide)))(jax.random.key(0), p, x)


def test_air_with_non_default_sizes_uses_its_config_everywhere(digits):
    """Sizes and settings come from the AIR object: canvases, parameters, the programs' densities
    (checked against log p written out by hand with this prior and noise), evaluation and the loss."""
    from jax.scipy.stats import norm

    from ppl.models import air
    from ppl.models.nets import mlp_apply

    a = air.AIR(canvas=12, glimpse=6, max_steps=2, z_what=3, hidden=8, obs_scale=0.5, prior_present=0.2)
    x, counts = a.make_canvases(jax.random.key(0), digits.images(digits.x_train)[:, 1:7, 1:7], 16)
    assert x.shape == (16, 144) and set(np.asarray(counts).tolist()) <= {0, 1, 2}
    p = a.init_params(jax.random.key(1))
    lw, n, where = a.infer(jax.random.key(2), p, x)
    assert lw.shape == (16,) and where.shape == (16, 2, 3) and np.all(np.isfinite(lw)) and int(jnp.max(n)) <= 2
    tr = ppl.simulate(a.guide)(jax.random.split(jax.random.key(2), 16)[0], p["phi"], x[:1])
    lp, _ = ppl.assess(a.model)(tr.choices, p["theta"], x[:1])
    np.testing.assert_allclose(lw[0], lp - tr.score, rtol=1e-5)
    canvas, alive, ref = jnp.zeros((12, 12)), 1.0, 0.0
    for pres, w, z in tr.retval:
        pres, w, z = pres[0], w[0], z[0]
        ref += pres * jnp.log(0.2) + (1 - pres) * jnp.log(0.8) + norm.logpdf(w).sum() + norm.logpdf(z).sum()
        alive = alive * pres
        canvas = canvas + alive * air.place(jax.nn.sigmoid(mlp_apply(p["theta"]["dec"], z)).reshape(6, 6), w, 12)
    ref += norm.logpdf(x[0], canvas.reshape(-1), 0.5).sum()
    np.testing.assert_allclose(lp, ref, rtol=1e-5)
    E = expectation(O.elbo(a.model, a.guide))
    assert len(E.plan((p["theta"], x[:1]), (p["phi"], x[:1])).rows) == 6
    assert jax.eval_shape(make_loss(E), jax.random.key(3), p, x[:4]).shape == ()  # the loss builds with it
    with pytest.raises(ValueError, match="canvas=16 needs 256"):
        air.AIR(glimpse=6, max_steps=2, z_what=3, hidden=8).elbo(jax.random.key(2), p, x)
    for bad in ({"glimpse": 20}, {"hidden": 0}, {"prior_present": 1.0}, {"obs_scale": 0.0}):
        with pytest.raises(ValueError, match="AIR: "):
            air.AIR(**bad)


def test_make_loss_learned_baseline_changes_the_gradient_not_the_loss(digits):
    """``params["baseline"]``: each Baseline gets ``b(x)``; the reported loss is unchanged and ``b``
    is trained by ``(ELBO - b)^2 / 2`` (at ``b = 0`` its bias gradient is the loss itself)."""
    from ppl.estimators import Baseline, ScoreFunction
    from ppl.models import dvae
    from ppl.models.losses import init_baseline

    p = dvae.init_params(jax.random.key(0), dvae.DVAEConfig(data_dim=64, latent_dim=3, hidden=(8,)))
    E = expectation(O.elbo(dvae.model, dvae.guide), estimators={"z": Baseline(ScoreFunction())})
    x, key = jnp.asarray(digits.x_train[:4]), jax.random.key(1)
    loss = jax.jit(jax.value_and_grad(make_loss(E, binarized=True), argnums=1))
    v0, g0 = loss(key, p, x)
    b = init_baseline(jax.random.key(2), 64, 8)
    v1, g1 = loss(key, {**p, "baseline": b}, x)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(g1["baseline"][-1]["b"], [v1], rtol=1e-5)
    np.testing.assert_allclose(g1["phi"][0]["w"], g0["phi"][0]["w"], rtol=1e-5)  # b(x) = 0 at the start
    b[-1]["b"] = jnp.full((1,), 5.0)  # b(x) = 5: same loss, another score-function gradient
    v2, g2 = loss(key, {**p, "baseline": b}, x)
    np.testing.assert_allclose(v2, v0, rtol=1e-6)
    assert not np.allclose(g2["phi"][0]["w"], g0["phi"][0]["w"], rtol=1e-3)
    with pytest.raises(ValueError, match="per_example=True"):
        make_loss(E, per_example=False)(key, {**p, "baseline": b}, x)


def test_air_transformer_roundtrip_and_steps(digits):
    from ppl.models import air

    a = air.AIR(hidden=16)
    g = jnp.asarray(digits.images(digits.x_train[:1])[0])
    where = jnp.zeros(3)  # scale 0.5, centred: the glimpse fills the middle 8x8 pixels exactly
    canvas = air.place(g, where, 16)
    np.testing.assert_allclose(canvas[4:12, 4:12], g, atol=1e-5)
    np.testing.assert_allclose(air.extract(canvas, where, 8), g, atol=1e-5)
    x, counts = a.make_canvases(jax.random.key(0), digits.images(digits.x_train), 64)
    assert x.shape == (64, 256) and set(np.asarray(counts).tolist()) <= {0, 1, 2, 3}
    p0 = a.init_params(jax.random.key(1))
    E = expectation(O.elbo(a.model, a.guide))
    plan = E.plan((p0["theta"], x[:1]), (p0["phi"], x[:1]))
    assert len(plan.rows) == 9
    loss = make_loss(E)
    res = fit(loss, optax.adam(1e-3), p0, key=jax.random.key(2), num_steps=3, data=x, batch_size=4, chunk=3,
              progress=False)
    assert np.all(np.isfinite(res.history))
    assert 0.0 <= float(a.count_accuracy(jax.random.key(3), res.params, x, counts)) <= 1.0


# --- the main command ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--model", "gan"], "--model 'gan': unknown model; choose one of vae, dvae, air"),
    (["--objective", "nope"], "--objective 'nope': unknown objective"),
    (["--estimator", "z=magic"], "unknown estimator 'magic'"),
    (["--estimator", "zz"], "expected ADDRESS=NAME"),
    (["--model", "dvae", "--estimator", "z=reparam"], "estimator 'reparam' at site 'z'"),
    (["--estimator", "z=enum"], "Use 'score' with a Baseline, 'loo', or 'mvd'"),  # flag names, not classes
    (["--estimator", "nowhere=reparam"], "no random choice"),
    (["--objective", "vimco", "--particles", "1"], "vimco needs k >= 2"),
    (["--data", "mnist", "--mnist-dir", "/nonexistent/mnist"], "MNIST file"),
    (["--steps", "-1"], "--steps must be >= 0"),
])
def test_cli_bad_flags_in_process(argv, message, capsys, tmp_path):
    from ppl.models import cli

    assert cli.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


def test_cli_bad_flag_subprocess(tmp_path):
    r = _run(["-m", "ppl", "--model", "dvae", "--estimator", "z=reparam"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("ppl: error: estimator 'reparam' at site 'z'") and "Traceback" not in r.stderr
    assert "Use 'score', 'enum'" in r.stderr and "ScoreFunction()" not in r.stderr
    assert r.stderr.count("\n") == 1


def test_cli_smoke_vae(tmp_path, capsys):
    """A run, the refusals that protect its checkpoint, then an exact resume (the real command)."""
    from ppl.models import cli

    tiny = ["--chunk", "2", "--eval-particles", "4", "--latent", "3", "--hidden", "16", "--out", "run",
            "--no-progress"]
    r = _run(["-m", "ppl", "--steps", "4", *tiny], tmp_path, PPL_JAX_CACHE=str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Reparam" in r.stdout and "test_log_likelihood: " in r.stdout and "plots:" in r.stdout
    assert "test_log_likelihood_particles: 4" in r.stdout and "resumed" not in r.stdout
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["model"] == "vae" and s["steps"] == 4 and s["resumed_at_step"] is None and s["compiler_options"] is None
    assert s["compilation_cache"] == str(tmp_path / "cache") and any((tmp_path / "cache").iterdir())
    for f in ("learning_curve.png", "reconstructions.png", "samples.png", "checkpoint.npz"):
        assert (tmp_path / "run" / f).stat().st_size > 0
    ckpt = tmp_path / "run" / "checkpoint.npz"
    before = ckpt.read_bytes()

    def refused(argv, *needles):
        capsys.readouterr()
        assert cli.main(argv + [a if a != "run" else str(tmp_path / "run") for a in tiny]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ppl: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        for n in needles:
            assert n in err, err
        assert ckpt.read_bytes() == before  # nothing overwritten

    refused(["--steps", "6"], "already holds a run of 4 steps", "--resume", "--overwrite")
    refused(["--steps", "6", "--resume", "--lr", "0.01"], "lr 0.001 in the checkpoint, 0.01 now",
            "--allow-config-change")
    refused(["--steps", "3", "--resume"], "--steps 3 is below the 4 steps")
    refused(["--steps", "6", "--resume", "--overwrite"], "contradict")
    r2 = _run(["-m", "ppl", "--steps", "6", "--resume", *tiny], tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "resumed at step 4" in r2.stdout
    s2 = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s2["steps"] == 6 and s2["resumed_at_step"] == 4
    ckpt.write_bytes(before[:100] + bytes(50) + before[150:])  # corrupted
    refused_bytes = ckpt.read_bytes()
    before = refused_bytes
    refused(["--steps", "8", "--resume"], str(ckpt), "corrupted")
    ckpt.write_bytes(b"not a checkpoint at all")
    r3 = _run(["-m", "ppl", "--steps", "8", "--resume", *tiny], tmp_path)  # the real command, too
    assert r3.returncode == 2 and r3.stderr.startswith("ppl: error: ") and r3.stderr.count("\n") == 1, r3.stderr
    assert "checkpoint.npz" in r3.stderr and "Traceback" not in r3.stderr
    assert ckpt.read_bytes() == b"not a checkpoint at all"


def test_cli_zero_steps_writes_no_curve_and_no_checkpoint(tmp_path, capsys):
    from ppl.models import cli

    assert cli.main(["--steps", "0", "--eval-particles", "2", "--latent", "2", "--hidden", "8",
                     "--out", str(tmp_path / "z"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    s = json.loads((tmp_path / "z" / "summary.json").read_text())
    assert s["steps"] == 0 and s["checkpoint"] is None and "no checkpoint" in out
    assert not (tmp_path / "z" / "learning_curve.png").exists() and not (tmp_path / "z" / "checkpoint.npz").exists()
    assert all(os.path.exists(p) for p in s["plots"]) and len(s["plots"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    ["--model", "dvae", "--estimator", "z=disarm", "--latent", "4", "--hidden", "16"],
    ["--model", "dvae", "--objective", "vimco", "--particles", "3", "--latent", "4", "--hidden", "16"],
    ["--model", "air", "--air-hybrid", "--hidden", "16", "--batch-size", "4"],
    ["--objective", "iwae", "--particles", "3", "--latent", "3", "--hidden", "16", "--eval-particles", "4"],
])
def test_cli_smoke_other_models(argv, tmp_path):
    r = _run(["-m", "ppl", *argv, "--steps", "2", "--chunk", "2", "--out", "run", "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    from ppl.transforms.fit import CPU_FUSED_DOTS  # AIR compiles its step with it on CPU, the others do not
    assert s["compiler_options"] == (CPU_FUSED_DOTS if "air" in argv else None)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["vae_digits.py", "dvae_estimators.py", "air_digits.py", "flax_or_equinox_vae.py"])
def test_examples_smoke(script, tmp_path):
    r = _run([os.path.join(ROOT, "examples", script), "--steps", "2", "--out", str(tmp_path / "ex"), "--tiny"],
             tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
