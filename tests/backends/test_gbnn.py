"""GBNN (ppl.backends.gbnn) against its definition: the intercept minimizes the loss, each stage's
step is the Newton step along that stage's network, the reported losses are those of the staged
model, and the merged network computes the staged sum exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from ppl.backends.gbnn import _loss_terms, gbnn_fit, mlp_apply, newton_step


def _data(loss, n=60, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    s = x @ np.array([1.0, -2.0, 0.5])[:d]
    if loss == "squared":
        return x, np.sin(s) + 0.1 * rng.normal(size=n)
    if loss == "logistic":
        return x, np.where(s > 0, "yes", "no")  # labels need not be 0/1
    return x, np.digitize(s, [-1.0, 1.0])


@pytest.fixture(scope="module", params=["squared", "logistic", "softmax"])
def fitted(request):
    loss = request.param
    x, y = _data(loss)
    with jax.enable_x64(True):
        g = gbnn_fit(x, y, key=jax.random.key(0), loss=loss, stages=4, units=2, learning_rate=0.5,
                     fit_steps=20)
    return loss, x, y, g


def _targets(loss, y, g):
    if loss == "squared":
        return jnp.asarray(y)[:, None]
    idx = np.searchsorted(g.classes, y)
    return jnp.asarray(idx, jnp.float64)[:, None] if loss == "logistic" else jnp.eye(len(g.classes))[idx]


def test_intercept_minimizes_the_loss(fitted):
    loss, x, y, g = fitted
    with jax.enable_x64(True):
        t = _targets(loss, y, g)
        grad = jax.grad(lambda c: jnp.sum(_loss_terms(loss, t, jnp.broadcast_to(c, t.shape))))(g.intercept)
        assert np.max(np.abs(np.asarray(grad))) < 1e-8 * len(y)


def test_steps_are_newton_steps_and_losses_are_the_staged_models(fitted):
    loss, x, y, g = fitted
    with jax.enable_x64(True):
        t = _targets(loss, y, g)
        h = g.stage_outputs(jnp.asarray(x))
        for s in range(g.stages):
            f_prev = g.decision_function(x, stages=s)
            # the Newton step by central finite differences of phi(rho), independent of autodiff
            phi = lambda r: float(jnp.mean(_loss_terms(loss, t, f_prev + r * h[s])))
            e = 1e-4
            d1 = (phi(e) - phi(-e)) / (2 * e)
            d2 = (phi(e) - 2 * phi(0.0) + phi(-e)) / e ** 2
            newton = -d1 / d2
            # the Newton step, halved until it does not increase the loss
            k = next(k for k in range(31) if phi(newton * 0.5 ** k) <= phi(0.0))
            np.testing.assert_allclose(float(g.rho[s]), newton * 0.5 ** k, rtol=1e-4)
            np.testing.assert_allclose(float(g.rho[s]), float(newton_step(loss, t, f_prev, h[s])), rtol=1e-10)
            reported = float(g.train_loss[s])
            actual = float(jnp.mean(_loss_terms(loss, t, g.decision_function(x, stages=s + 1))))
            np.testing.assert_allclose(reported, actual, rtol=1e-10)
        assert g.train_loss[-1] < float(jnp.mean(_loss_terms(loss, t, g.decision_function(x, stages=0))))


def test_merged_network_is_the_staged_sum(fitted):
    loss, x, y, g = fitted
    with jax.enable_x64(True):
        for s in (0, 1, g.stages):
            net = g.network(s)
            assert net.w1.shape == (x.shape[1], 2 * s)
            np.testing.assert_allclose(mlp_apply(net, jnp.asarray(x)), g.decision_function(x, stages=s),
                                       rtol=1e-12, atol=1e-12)


def test_learns_iris_in_float32():
    x, y = load_iris(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    sc = StandardScaler().fit(xtr)
    g = gbnn_fit(sc.transform(xtr), ytr, key=jax.random.key(1), loss="softmax", stages=10, units=2,
                 fit_steps=50)
    assert g.w1.dtype == jnp.float32
    assert np.all(np.diff(np.asarray(g.train_loss)) <= 1e-6)  # safeguarded steps never raise the loss
    # a constant (intercept-only) predictor scores 1/3 on this balanced split
    assert np.mean(g.predict(sc.transform(xte)) == yte) >= 0.9
    assert g.predict_proba(sc.transform(xte)).shape == (len(yte), 3)


@pytest.mark.parametrize("kwargs, y, match", [
    (dict(loss="hinge"), None, "loss='hinge'"),
    (dict(stages=0), None, "stages=0"),
    (dict(subsample=0.0), None, "subsample=0.0"),
    (dict(subsample=1.5), None, "subsample=1.5"),
    (dict(learning_rate=-1.0), None, "learning_rate=-1.0"),
    (dict(activation="gelu"), None, "activation='gelu'"),
    (dict(loss="logistic"), np.arange(10) % 3, "exactly 2 classes"),
    (dict(loss="softmax"), np.zeros(10), "single class"),
    (dict(), np.ones(9), "x has 10 rows but y has 9"),
    (dict(), np.r_[np.ones(9), np.nan], "NaN"),
])
def test_bad_inputs_raise_naming_the_argument(kwargs, y, match):
    x = np.random.default_rng(0).normal(size=(10, 2))
    y = np.ones(10) if y is None else y
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        gbnn_fit(x, y, key=jax.random.key(0), **kwargs)


def test_nan_features_and_bad_stage_counts_raise():
    x = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match="x contains NaN"):
        gbnn_fit(np.where(x > 1, np.nan, x), np.ones(10), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"x must be a matrix \[n, d\]"):
        gbnn_fit(x[:, 0], np.ones(10), key=jax.random.key(0))
    g = gbnn_fit(x, x[:, 0], key=jax.random.key(0), stages=2, fit_steps=5)
    with pytest.raises(ValueError, match=r"stages=3\): must be an integer in \[0, 2\]"):
        g.network(3)
    with pytest.raises(ValueError, match="loss='squared'"):
        g.predict_proba(x)
    assert g.predict(x).shape == (10,)


def test_example_runs(capsys):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parents[2] / "examples" / "gbnn_vs_mlp.py"
    spec = importlib.util.spec_from_file_location("gbnn_vs_mlp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--quick", "--datasets", "iris"])
    out = capsys.readouterr().out
    assert "iris" in out and "paper:" in out
    assert set(res["iris"]) == {"gbnn", "half", "adam", "lbfgs"}
    assert res["iris"]["gbnn"] > 0.6  # 4 units; chance is 1/3
