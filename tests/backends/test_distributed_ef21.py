"""EF21 / EF21-W (ppl.backends.distributed) on one device: against a sequential NumPy
reference of the paper's Algorithm 2, EF21-W = EF21 under Top-K, the stepsizes' ratio, the
arithmetic-mean stepsize converging in fewer rounds on heterogeneous logistic regression, the
stochastic-gradient and partial-participation semantics, the bytes counted, a ppl model's log
density as the local loss, and bad input. The mesh (8 simulated devices) is checked by
test_distributed_mesh.py."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl.backends.distributed import EF21State, ef21, ef21_stepsize, ef21_w, identity, rand_k, top_k
from ppl.models.federated import heterogeneous_logistic, logistic_loss

LAM = 0.1
loss = logistic_loss(LAM)


def logistic_problem(n=8, m=30, d=12, seed=0):
    return heterogeneous_logistic(n=n, m=m, d=d, lam=LAM, seed=seed)


def np_grad(x, a, y):
    z = y * (a @ x)
    s = -y / (1 + np.exp(z))
    return a.T @ s / len(y) + LAM * 2 * x / (1 + x ** 2) ** 2


def np_top_k(v, k):
    out = np.zeros_like(v)
    idx = np.argsort(-np.abs(v), kind="stable")[:k]
    out[idx] = v[idx]
    return out


def reference_ef21_w(data, w, gamma, k, x0, rounds):
    """Algorithm 2 of "Error Feedback Reloaded", one client after the other, in NumPy."""
    n = len(w)
    gi = [np_grad(x0, data["a"][i], data["y"][i]) / (n * w[i]) for i in range(n)]
    g = sum(w[i] * gi[i] for i in range(n))
    x, xs = x0.copy(), []
    for _ in range(rounds):
        x = x - gamma * g
        for i in range(n):
            c = np_top_k(np_grad(x, data["a"][i], data["y"][i]) / (n * w[i]) - gi[i], k)
            gi[i] = gi[i] + c
            g = g + w[i] * c
        xs.append(x)
    return np.array(xs)


def test_ef21_w_follows_algorithm_2():
    with jax.enable_x64(True):
        data, Li, Lf, x0 = logistic_problem(n=4, m=10, d=6)
        gamma, k = ef21_stepsize(Li, 2 / 6, L=Lf), 2
        m = ef21_w(loss, top_k(k), gamma, smoothness=Li)
        st = m.init(jax.random.key(0), jnp.asarray(x0), data)
        xs = []
        for _ in range(15):
            st, info = m.step(jax.random.key(1), st, data)
            xs.append(np.asarray(st.params))
        ref = reference_ef21_w(data, Li / Li.sum(), gamma, k, x0, 15)
        np.testing.assert_allclose(np.array(xs), ref, rtol=0, atol=1e-12)
        # run() is the same rounds in one scan
        st2, _ = m.run(jax.random.key(1), m.init(jax.random.key(0), jnp.asarray(x0), data), data, 15)
        np.testing.assert_allclose(np.asarray(st2.params), xs[-1], rtol=0, atol=1e-12)
        # a negative control: the reference with uniform weights (plain EF21 state) and a wrong
        # stepsize is told apart
        assert np.max(np.abs(reference_ef21_w(data, Li / Li.sum(), 1.1 * gamma, k, x0, 15) - ref)) > 1e-6


def test_ef21_w_iterates_equal_ef21_under_top_k():
    """Positively homogeneous C: h_i = n w_i g_i follows EF21, so the iterates coincide."""
    with jax.enable_x64(True):
        data, Li, Lf, x0 = logistic_problem()
        gamma = ef21_stepsize(Li, 3 / 12, L=Lf)
        a = ef21(loss, top_k(3), gamma)
        b = ef21_w(loss, top_k(3), gamma, smoothness=Li)
        sa, ia = a.run(jax.random.key(1), a.init(jax.random.key(0), jnp.asarray(x0), data), data, 100)
        sb, ib = b.run(jax.random.key(1), b.init(jax.random.key(0), jnp.asarray(x0), data), data, 100)
        assert np.max(np.abs(np.asarray(sa.params) - np.asarray(sb.params))) < 1e-12
        n_w = 8 * Li / Li.sum()
        np.testing.assert_allclose(np.asarray(sb.g_clients) * n_w[:, None], np.asarray(sa.g_clients), atol=1e-10)
        assert np.max(np.abs(np.asarray(sb.g_clients) - np.asarray(sa.g_clients))) > 1e-3  # states differ


def test_arithmetic_mean_stepsize_ratio_in_the_papers_example():
    L = [1.0, 1.0, 1.0, 100.0]
    l_am, l_qm = 103 / 4, math.sqrt(10003 / 4)
    assert l_qm / l_am == pytest.approx(1.9420, abs=1e-4)  # "1.9x" in the paper's example
    for alpha in (0.5, 0.1, 1e-3, 1e-6):
        s = math.sqrt(1 - alpha)
        r = math.sqrt(((1 - alpha) / (1 - s)) / (1 - s))
        ratio = ef21_stepsize(L, alpha, mean="arithmetic") / ef21_stepsize(L, alpha, mean="quadratic")
        assert ratio == pytest.approx((l_am + l_qm * r) / (l_am + l_am * r), rel=1e-12)
        assert 1 < ratio < l_qm / l_am
    # as alpha -> 0 (heavy compression) the stepsizes' ratio tends to L_QM / L_AM
    assert ef21_stepsize(L, 1e-6) / ef21_stepsize(L, 1e-6, mean="quadratic") == pytest.approx(l_qm / l_am, rel=2e-3)
    assert ef21_stepsize(L, 1.0) == 1 / l_am  # no compression: 1/L


def test_arithmetic_mean_stepsize_converges_in_fewer_rounds():
    with jax.enable_x64(True):
        data, Li, Lf, x0 = logistic_problem()
        assert Li.max() / Li.min() >= 100  # two orders of magnitude
        rounds = {}
        for mean in ("quadratic", "arithmetic"):
            gamma = ef21_stepsize(Li, 4 / 12, L=Lf, mean=mean)
            m = ef21(loss, top_k(4), gamma)
            _, info = m.run(jax.random.key(1), m.init(jax.random.key(0), jnp.asarray(x0), data), data, 800)
            g = np.asarray(info.grad_norm_sq)
            assert np.all(np.isfinite(g))
            hit = np.flatnonzero(g <= 1e-4 * g[0])
            assert hit.size, mean
            rounds[mean] = int(hit[0])
        # measured 414 against 661 rounds; the stepsizes' ratio is 1.59
        assert rounds["arithmetic"] < 0.8 * rounds["quadratic"], rounds


def test_bytes_sent_count_values_and_indices():
    with jax.enable_x64(True):
        data, Li, Lf, x0 = logistic_problem(n=4, m=10, d=6)
        for comp, per in ((top_k(2), 2 * (8 + 4)), (rand_k(3), 3 * (8 + 4)), (identity(), 6 * 8)):
            m = ef21(loss, comp, 0.01)
            _, info = m.run(jax.random.key(1), m.init(jax.random.key(0), jnp.asarray(x0), data), data, 3)
            assert np.asarray(info.bytes_sent).tolist() == [4 * per] * 3, comp
        assert m.init_bytes(jnp.asarray(x0), 4) == 4 * 6 * 8


def test_partial_participation_semantics():
    with jax.enable_x64(True):
        data, Li, Lf, x0 = logistic_problem(n=8, m=10, d=6)
        w = Li / Li.sum()
        m = ef21_w(loss, top_k(2), 0.01, smoothness=Li, participation=0.4)
        st = m.init(jax.random.key(0), jnp.asarray(x0), data)
        counts = []
        for r in range(6):
            new, info = m.step(jax.random.key(1), st, data)
            x = np.asarray(new.params)
            np.testing.assert_allclose(x, np.asarray(st.params) - 0.01 * np.asarray(st.g), atol=1e-14)
            old_gi, gi = np.asarray(st.g_clients), np.asarray(new.g_clients)
            sent = np.any(old_gi != gi, axis=1)
            for i in range(8):  # a participant's update is Top-K of its difference; others keep g_i
                want = old_gi[i] + np_top_k(np_grad(x, data["a"][i], data["y"][i]) / (8 * w[i]) - old_gi[i], 2)
                np.testing.assert_allclose(gi[i], want if sent[i] else old_gi[i], atol=1e-12)
            np.testing.assert_allclose(np.asarray(new.g), w @ gi, atol=1e-12)  # g = sum_i w_i g_i
            assert int(info.participants) == sent.sum() and int(info.bytes_sent) == sent.sum() * 2 * 12
            counts.append(int(sent.sum()))
            st = new
        assert 0 < sum(counts) < 48 and len(set(counts)) > 1  # some, not all, and varying


def test_stochastic_gradients_use_a_minibatch_without_replacement():
    """Per-example gradient e_j (one-hot): a client's gradient on a minibatch of b distinct
    examples has exactly b entries equal to 1/b."""
    with jax.enable_x64(True):
        n, mm, b = 4, 10, 3
        data = {"e": jnp.tile(jnp.eye(mm)[None], (n, 1, 1))}
        lin = lambda k, x, batch: jnp.mean(batch["e"] @ x)
        m = ef21(lin, identity(), 0.1, batch_size=b)
        st = m.init(jax.random.key(0), jnp.zeros(mm), data)
        picks = set()
        for _ in range(3):
            st, _ = m.step(jax.random.key(1), st, data)
            for gi in np.asarray(st.g_clients):  # identity: g_i is the latest minibatch gradient
                np.testing.assert_allclose(np.sort(gi)[::-1], [1 / b] * b + [0] * (mm - b), atol=1e-15)
                picks.add(tuple(np.flatnonzero(gi)))
        assert len(picks) > 3  # clients and rounds draw different minibatches
        full = ef21(lin, identity(), 0.1, batch_size=mm)
        st = full.init(jax.random.key(0), jnp.zeros(mm), data)
        st, _ = full.step(jax.random.key(1), st, data)
        np.testing.assert_allclose(np.asarray(st.g_clients), 1 / mm, atol=1e-15)


def test_a_ppl_model_as_the_local_loss():
    """Client loss = minus the log joint of a ppl Bayesian logistic regression at w (MAP),
    scored by ppl.assess: the same iterates as the hand-written density."""
    with jax.enable_x64(True):
        data, Li, Lf, x0 = logistic_problem(n=4, m=10, d=6)

        def model(a, y):
            w = ppl.sample("w", nd.Normal(jnp.zeros(a.shape[1]), 1.0).to_event(1))
            ppl.sample("y", nd.Bernoulli(logits=a @ w).to_event(1), obs=(y > 0).astype(jnp.float64))

        def ppl_loss(key, x, b):
            return -ppl.assess(model)({"w": x}, b["a"], b["y"])[0] / b["y"].shape[0]

        def hand_loss(key, x, b):
            z = b["y"] * (b["a"] @ x)
            return (jnp.sum(jnp.logaddexp(0, -z)) + 0.5 * x @ x + 0.5 * x.size * jnp.log(2 * jnp.pi)) / b["y"].shape[0]

        out = []
        for f in (ppl_loss, hand_loss):
            m = ef21(f, top_k(2), 0.02)
            st, info = m.run(jax.random.key(1), m.init(jax.random.key(0), jnp.asarray(x0), data), data, 30)
            out.append((np.asarray(st.params), np.asarray(info.loss)))
        np.testing.assert_allclose(out[0][0], out[1][0], atol=1e-12)
        assert out[0][1][-1] < out[0][1][0]


def test_bad_input_is_named():
    data, Li, _, x0 = logistic_problem(n=4, m=10, d=6)
    with pytest.raises(ValueError, match="k exceeds the number of parameters"):
        ef21(loss, top_k(7), 0.1).init(jax.random.key(0), jnp.asarray(x0), data)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k(0)
    with pytest.raises(ValueError, match="stepsize"):
        ef21(loss, top_k(2), -1.0)
    with pytest.raises(ValueError, match="participation"):
        ef21(loss, top_k(2), 0.1, participation=0.0)
    with pytest.raises(ValueError, match="4 weights for 3 clients"):
        three = {k: v[:3] for k, v in data.items()}
        ef21_w(loss, top_k(2), 0.1, smoothness=Li).init(jax.random.key(0), jnp.asarray(x0), three)
    with pytest.raises(ValueError, match="positive finite"):
        ef21_w(loss, top_k(2), 0.1, smoothness=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"batch_size=11.*\[1, 10\]"):
        ef21(loss, top_k(2), 0.1, batch_size=11).init(jax.random.key(0), jnp.asarray(x0), data)
    with pytest.raises(ValueError, match="leading"):
        ef21(loss, top_k(2), 0.1).init(jax.random.key(0), jnp.asarray(x0), {"a": data["a"], "y": data["y"][:3]})
    with pytest.raises(ValueError, match="mean="):
        ef21_stepsize(Li, 0.5, mean="geometric")
    with pytest.raises(TypeError, match="Mesh"):
        ef21(loss, top_k(2), 0.1, mesh="cpu").init(jax.random.key(0), jnp.asarray(x0), data)
    assert isinstance(ef21(loss, top_k(2), 0.1).init(jax.random.key(0), jnp.asarray(x0), data), EF21State)


def test_an_adev_objective_as_the_local_loss():
    """Client loss = minus a ppl ELBO (``expectation(objectives.elbo(...))``) of a two-component
    model with the discrete latent enumerated (``Enum``: the ADEV estimate is exact), so EF21's
    iterates equal those with the hand-written exact ELBO."""
    from ppl.estimators import Enum
    from ppl.transforms import expectation
    from ppl.transforms import objectives as O

    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        y = rng.normal(size=(4, 6)) + np.array([1.0, -1.0, 0.5, 2.0])[:, None]

        def model(theta, y):
            z = ppl.sample("z", nd.Bernoulli(0.3))
            ppl.sample("y", nd.Normal(theta["m"] + 2.0 * z - 1.0, 1.0).expand(y.shape).to_event(1), obs=y)

        def guide(phi):
            ppl.sample("z", nd.Bernoulli(logits=phi["a"]))

        E = expectation(O.elbo(model, guide), estimators={"z": Enum()})

        def ppl_loss(key, p, b):
            return -E.estimate(key, ({"m": p["m"]}, b["y"]), ({"a": p["a"]},)) / b["y"].shape[0]

        def exact_loss(key, p, b):
            q1 = jax.nn.sigmoid(p["a"])
            def log_joint(z):
                mean = p["m"] + 2.0 * z - 1.0
                return jnp.log(0.3 if z else 0.7) + jnp.sum(-0.5 * (b["y"] - mean) ** 2 - 0.5 * jnp.log(2 * jnp.pi))
            elbo = q1 * (log_joint(1) - jnp.log(q1)) + (1 - q1) * (log_joint(0) - jnp.log1p(-q1))
            return -elbo / b["y"].shape[0]

        p0 = {"a": jnp.float64(0.4), "m": jnp.float64(-0.2)}
        out = []
        for f in (ppl_loss, exact_loss):
            m = ef21(f, top_k(1), 0.1)
            st, info = m.run(jax.random.key(1), m.init(jax.random.key(0), p0, {"y": y}), {"y": y}, 25)
            out.append((np.array([st.params["a"], st.params["m"]]), np.asarray(info.loss)))
        np.testing.assert_allclose(out[0][0], out[1][0], atol=1e-10)
        np.testing.assert_allclose(out[0][1], out[1][1], atol=1e-10)
        assert out[0][1][-1] < out[0][1][0]
