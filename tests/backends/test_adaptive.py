"""ppl.backends.adaptive: AdaGrad-Norm, AdAdaGrad's batch-size tests, fit's adaptive-batch mode,
batch-size-aware learning rates; each against its definition written out in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppl.backends import adaptive as A
from ppl.transforms import _adaptive_fit
from ppl.transforms.fit import CheckpointError, fit, kernel


def test_adagrad_norm_matches_the_definition():
    with jax.enable_x64(True):
        c = np.array([1.0, -2.0, 0.5])
        grad = lambda x: np.array([3.0, 1.0, 0.2]) * (x - c)
        opt = A.adagrad_norm(0.7, initial_accumulator_value=0.3, eps=0.0)
        params = {"a": jnp.zeros(2), "b": jnp.zeros(())}
        state = opt.init(params)
        x, b2 = np.zeros(3), 0.3
        for _ in range(6):
            g = grad(x)
            b2 += g @ g
            x = x - 0.7 * g / np.sqrt(b2)
            flat = np.concatenate([params["a"], params["b"][None]])
            gx = grad(flat)
            u, state = opt.update({"a": jnp.asarray(gx[:2]), "b": jnp.asarray(gx[2])}, state, params)
            params = optax.apply_updates(params, u)
        np.testing.assert_allclose(np.concatenate([params["a"], params["b"][None]]), x, rtol=1e-12)
        assert float(state[0].sum_of_squares) == pytest.approx(b2, rel=1e-12)


def test_adagrad_norm_keeps_dtypes_and_refuses_bad_hyperparameters():
    opt = A.adagrad_norm(0.1)
    p = {"w": jnp.ones(3, jnp.bfloat16)}
    u, _ = jax.jit(opt.update)({"w": jnp.ones(3, jnp.bfloat16)}, opt.init(p), p)
    assert u["w"].dtype == jnp.bfloat16
    for bad in (-0.1, 0.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="learning_rate"):
            A.adagrad_norm(bad)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        A.adagrad_norm(0.1, initial_accumulator_value=-1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        A.adagrad_norm(0.1, initial_accumulator_value=0.0, eps=0.0)


def test_adagrad_norm_under_inject_hyperparams():
    """The learning rate as state: changing it does not recompile, and the step follows it."""
    opt = optax.inject_hyperparams(A.adagrad_norm)(learning_rate=0.5, initial_accumulator_value=0.0)
    p = jnp.ones(3)
    s = opt.init(p)
    update = jax.jit(opt.update)
    u, s = update(jnp.full(3, 2.0), s, p)
    np.testing.assert_allclose(u, -0.5 * 2.0 / np.sqrt(12.0), rtol=1e-6)
    s.hyperparams["learning_rate"] = jnp.asarray(0.25)
    u2, _ = update(jnp.full(3, 2.0), s, p)
    np.testing.assert_allclose(u2, -0.25 * 2.0 / np.sqrt(24.0), rtol=1e-6)


def _by_hand(G):
    """The three tests' statistics written out with explicit loops (G: b x d)."""
    b, d = G.shape
    gbar = G.sum(0) / b
    n2 = sum(x * x for x in gbar)
    var = [sum((G[i, j] - gbar[j]) ** 2 for i in range(b)) / (b - 1) for j in range(d)]
    ip = [G[i] @ gbar for i in range(b)]
    ip_var = sum((v - sum(ip) / b) ** 2 for v in ip) / (b - 1)
    orth = np.stack([G[i] - ip[i] * gbar / n2 for i in range(b)])
    orth_var = sum(np.var(orth[:, j], ddof=1) for j in range(d))
    return sum(var), ip_var, orth_var, n2


def test_batch_size_tests_match_their_definitions():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        G = rng.normal(size=(7, 5)) + np.array([1.0, -0.5, 0.2, 0.0, 2.0])
        tree = {"a": jnp.asarray(G[:, :2].reshape(7, 2, 1)), "b": jnp.asarray(G[:, 2:])}
        v1, vip, vorth, n2 = _by_hand(G)
        eta, theta, nu = 0.3, 0.7, 0.4
        assert float(A.norm_test(tree, eta)) == pytest.approx(v1 / (eta ** 2 * n2), rel=1e-10)
        assert float(A.inner_product_test(tree, theta)) == pytest.approx(vip / (theta ** 2 * n2 ** 2), rel=1e-10)
        assert float(A.orthogonality_test(tree, nu)) == pytest.approx(vorth / (nu ** 2 * n2), rel=1e-10)
        assert float(A.augmented_inner_product_test(tree, theta, nu)) == pytest.approx(
            max(vip / (theta ** 2 * n2 ** 2), vorth / (nu ** 2 * n2)), rel=1e-10)
        with pytest.raises(ValueError, match="at least 2"):
            A.norm_test({"a": jnp.ones((1, 3))}, 0.1)


def test_adaptive_batch_buckets_and_monotone_rule():
    ctl = A.AdaptiveBatch(test="norm", eta=0.5, initial=4, maximum=48)
    assert ctl.buckets() == (4, 8, 16, 32, 48)
    G = np.random.default_rng(1).normal(size=(8, 3)) + 1.0
    req = float(ctl.required({"g": jnp.asarray(G, jnp.float32)}))
    expect = min(b for b in ctl.buckets() if b >= min(np.ceil(req), 48))
    assert int(ctl.next_batch_size({"g": jnp.asarray(G, jnp.float32)}, 4)) == max(4, expect)
    # never decreases, never exceeds the maximum
    assert int(ctl.next_batch_size({"g": jnp.asarray(G, jnp.float32)}, 32)) >= 32
    N = np.random.default_rng(2).normal(size=(8, 3))
    noisy = {"g": jnp.asarray(N - N.mean(0) + 1e-2, jnp.float32)}  # mean gradient tiny: huge batch asked
    assert int(ctl.next_batch_size(noisy, 4)) == 48
    assert int(ctl.next_batch_size({"g": jnp.zeros((4, 3))}, 8)) == 48  # zero mean gradient: infinite


@pytest.mark.parametrize("kwargs, match", [
    (dict(test="nrm", eta=0.1), "test must be one of"),
    (dict(test="norm"), "needs eta="),
    (dict(test="augmented", theta=0.5), "needs nu="),
    (dict(test="norm", eta=0.1, theta=0.2), "theta= is not used"),
    (dict(test="norm", eta=-0.1), "eta=-0.1 must be"),
    (dict(test="norm", eta=0.1, initial=1), "initial must be >= 2"),
    (dict(test="norm", eta=0.1, initial=8, maximum=4), "maximum"),
    (dict(test="norm", eta=0.1, every=0), "every must be"),
])
def test_adaptive_batch_refuses_bad_configurations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.AdaptiveBatch(**kwargs)


def _logreg(n=64, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.8 * rng.normal(size=n) > 0).astype(np.float32)

    def loss(key, p, batch):
        xb, yb = batch
        z = xb @ p["w"] + p["b"]
        return jnp.mean(jax.nn.softplus(z) - yb * z)

    return loss, {"w": jnp.zeros(d), "b": jnp.zeros(())}, (x, y)


CTL = A.AdaptiveBatch(test="norm", eta=0.3, initial=4, maximum=32)
OPT = optax.chain(A.adagrad_norm(0.5), A.scale_by_batch_size(base_batch_size=4, rule="sqrt"))


def test_fit_adaptive_equals_a_step_by_step_replay(key):
    """fit's chunked while-loop equals a plain Python loop of the same definition: step t draws
    examples pos..pos+b-1 of the epoch-permutation stream, the optimizer sees batch_size=b,
    and the norm test on that step's per-example gradients picks the next b."""
    loss, p0, data = _logreg()
    res = fit(loss, OPT, p0, key=key, num_steps=14, data=data, batch_size=CTL, chunk=5)
    assert len(res.history) == len(res.batch_sizes) == 14 and int(res.state.step) == 14
    assert np.all(np.diff(res.batch_sizes) >= 0) and set(res.batch_sizes) <= set(CTL.buckets())
    assert res.batch_sizes[0] == 4 and res.batch_sizes[-1] > 4  # it grew

    kern = kernel(loss, OPT)
    state, b, pos = kern.init(p0), 4, 0
    step_key, data_key = jax.random.split(key)

    @jax.jit
    def replay_step(k, state, pos, b, batch):
        new, info = kern.step(k, state, batch, batch_size=b)
        pe = jax.vmap(lambda ex: jax.grad(loss, argnums=1)(k, state.params, (ex[0][None], ex[1][None])))(batch)
        return new, info["loss"], CTL.next_batch_size(pe, b)

    for t in range(14):
        assert b == res.batch_sizes[t]
        k = jax.random.fold_in(step_key, t)
        batch = _adaptive_fit._stream_batch(data, data_key, jnp.int32(pos), b, 64)
        state, value, nb = replay_step(k, state, pos, b, batch)
        assert float(value) == pytest.approx(float(res.history[t]), rel=1e-5)
        pos, b = pos + b, int(nb)
    for name in ("w", "b"):
        np.testing.assert_allclose(res.params[name], state.params[name], rtol=1e-5, atol=1e-6)


def test_stream_batches_cover_each_epoch_once(key):
    """Consecutive batches of any sizes walk through each epoch's permutation without repeats."""
    data = jnp.arange(10)
    seen = []
    pos = 0
    for b in (3, 3, 4, 2, 8):
        seen.extend(np.asarray(_adaptive_fit._stream_batch(data, key, jnp.int32(pos), b, 10)).tolist())
        pos += b
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))


def test_fit_adaptive_checkpoint_resumes_exactly(key, tmp_path):
    loss, p0, data = _logreg()
    full = fit(loss, OPT, p0, key=key, num_steps=14, data=data, batch_size=CTL, chunk=5)
    ck = str(tmp_path / "run.npz")
    fit(loss, OPT, p0, key=key, num_steps=8, data=data, batch_size=CTL, chunk=5, checkpoint=ck)
    res = fit(loss, OPT, p0, key=key, num_steps=14, data=data, batch_size=CTL, chunk=5, checkpoint=ck, resume=True)
    np.testing.assert_array_equal(res.batch_sizes, full.batch_sizes)
    np.testing.assert_array_equal(res.history, full.history)
    for name in ("w", "b"):
        np.testing.assert_array_equal(res.params[name], full.params[name])
    # a fixed-batch checkpoint is not an adaptive one
    ck2 = str(tmp_path / "fixed.npz")
    fit(loss, optax.sgd(0.1), p0, key=key, num_steps=2, data=data, batch_size=4, checkpoint=ck2)
    with pytest.raises(CheckpointError):
        fit(loss, optax.sgd(0.1), p0, key=key, num_steps=4, data=data, batch_size=CTL, checkpoint=ck2, resume=True)


def test_fit_adaptive_refuses_bad_input(key):
    loss, p0, data = _logreg()
    with pytest.raises(ValueError, match="exceeds the number of examples 64"):
        fit(loss, OPT, p0, key=key, num_steps=2, data=data, batch_size=A.AdaptiveBatch(test="norm", eta=0.1, maximum=128))
    with pytest.raises(ValueError, match="needs data="):
        fit(loss, OPT, p0, key=key, num_steps=2, batch_size=CTL)
    with pytest.raises(ValueError, match="debug=True"):
        fit(loss, OPT, p0, key=key, num_steps=2, data=data, batch_size=CTL, debug=True)
    with pytest.raises(ValueError, match="adaptive-batch controller"):
        fit(loss, OPT, p0, key=key, num_steps=2, data=data, batch_size="auto")


def test_batch_scaled_learning_rate():
    assert A.batch_scaled_learning_rate(0.1, 256, base_batch_size=32, rule="linear") == pytest.approx(0.8)
    assert A.batch_scaled_learning_rate(1e-3, 128, base_batch_size=32, rule="sqrt") == pytest.approx(2e-3)
    sched = A.batch_scaled_learning_rate(optax.linear_schedule(1.0, 0.0, 10), 8, base_batch_size=2, rule="sqrt")
    assert float(sched(5)) == pytest.approx(1.0)  # 0.5 * sqrt(4)
    with pytest.raises(ValueError, match="rule must be"):
        A.batch_scaled_learning_rate(0.1, 8, base_batch_size=2, rule="quadratic")
    with pytest.raises(ValueError, match="batch_size"):
        A.batch_scaled_learning_rate(0.1, 0, base_batch_size=2, rule="linear")
    t = A.scale_by_batch_size(base_batch_size=4, rule="linear")
    u, _ = t.update({"w": jnp.ones(2)}, t.init(None), batch_size=12)
    np.testing.assert_allclose(u["w"], [3.0, 3.0])
    with pytest.raises(ValueError, match="needs batch_size="):
        t.update({"w": jnp.ones(2)}, t.init(None))


def test_fit_adaptive_stops_on_a_non_finite_step_keeping_the_last_good_state(key, tmp_path):
    from ppl.transforms.fit import NonFiniteError, load_checkpoint

    loss, p0, (x, y) = _logreg()
    x = x.copy()
    x[17] = np.nan  # the first batch that contains example 17 gives a NaN loss
    ck = str(tmp_path / "run.npz")
    with pytest.raises(NonFiniteError, match="not finite at step") as err:
        fit(loss, OPT, p0, key=key, num_steps=40, data=(x, y), batch_size=CTL, chunk=5, checkpoint=ck)
    good = int(err.value.state.step)
    assert 0 < good < 40 and np.all(np.isfinite(np.asarray(err.value.state.params["w"])))
    template = {"fit": err.value.state, "adaptive_batch": _adaptive_fit.AdaptiveBatchState(jnp.int32(0), jnp.int32(0))}
    both, history, extras = load_checkpoint(ck, template, extras=("batch_sizes",))
    assert int(both["fit"].step) == good == len(history) == len(extras["batch_sizes"])
    assert int(both["adaptive_batch"].examples_seen) == int(np.sum(extras["batch_sizes"]))
    assert np.all(np.isfinite(history))
