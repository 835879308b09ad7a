"""FedAMD and FedAvg (ppl.backends.distributed) against a sequential NumPy implementation of
their rounds (clients holding one example, so every minibatch is that example and the rounds
are deterministic given the participants and anchors the run reports), the sampling
semantics (A of N participants, anchors among them with probability p, padded rows never
used), the Dirichlet split, and bad input. The mesh: test_distributed_mesh.py."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl.backends.distributed import fedamd, fedavg, stack_clients
from ppl.models.federated import dirichlet_split

from .._stats import Z

D = 3


def loss(key, x, b):  # (a/2) ||x - c||^2 averaged over the batch
    return jnp.mean(0.5 * b["a"] * jnp.sum((x - b["c"]) ** 2, -1))


def problem(n=8, pad_rows=2, seed=0):
    rng = np.random.default_rng(seed)
    parts = [{"c": rng.normal(size=(1, D)), "a": rng.uniform(0.5, 2.0, size=(1,))} for _ in range(n)]
    parts.append({"c": np.zeros((1 + pad_rows, D)), "a": np.ones(1 + pad_rows)})  # makes the others padded
    data, counts = stack_clients(parts)
    data = {k: v[:n] for k, v in data.items()}
    counts = counts[:n]
    data["c"][:, 1:] = 1e3  # padded rows: any use of them would show
    data["a"][:, 1:] = 1e3
    return data, counts


def grad(x, data, i):
    return data["a"][i, 0] * (x - data["c"][i, 0])


def reference(data, x0, infos, K, eta_l, eta_g, amd):
    n = data["c"].shape[0]
    x = x0.copy()
    G = np.array([grad(x0, data, i) for i in range(n)])
    xs = []
    for part, anch in infos:
        d = G.mean(0)
        deltas, newG = [], G.copy()
        for i in range(n):
            if not part[i]:
                continue
            if amd and anch[i]:
                newG[i] = grad(x, data, i)
                continue
            if amd:
                y_prev, y, v = x, x - eta_l * d, d
                for _ in range(K - 1):
                    v = v + grad(y, data, i) - grad(y_prev, data, i)
                    y_prev, y = y, y - eta_l * v
            else:
                y = x
                for _ in range(K):
                    y = y - eta_l * grad(y, data, i)
            deltas.append(x - y)
        G = newG
        if deltas:
            x = x - eta_g * np.mean(deltas, 0)
        xs.append(x)
    return np.array(xs)


@pytest.mark.parametrize("method", ["fedamd", "fedavg"])
def test_rounds_follow_the_definition(method):
    with jax.enable_x64(True):
        data, counts = problem()
        x0 = np.array([0.3, -0.2, 0.5])
        kw = dict(local_steps=4, local_lr=0.1, global_lr=0.7, batch_size=5, clients_per_round=3)
        m = fedamd(loss, anchor_probability=0.4, **kw) if method == "fedamd" else fedavg(loss, **kw)
        st = m.init(jax.random.key(0), jnp.asarray(x0), data, counts)
        xs, infos = [], []
        for _ in range(12):
            st, info = m.step(jax.random.key(1), st, data, counts)
            xs.append(np.asarray(st.params))
            infos.append((np.asarray(info.participants), np.asarray(info.anchors)))
            assert int(info.bytes_sent) == 3 * D * 8
        ref = reference(data, x0, infos, 4, 0.1, 0.7, method == "fedamd")
        np.testing.assert_allclose(np.array(xs), ref, rtol=0, atol=1e-12)
        assert all(p.sum() == 3 and not np.any(a & ~p) for p, a in infos)
        if method == "fedamd":
            assert 0 < sum(a.sum() for _, a in infos) < 36  # some anchors, some miners
            # a control: the reference without the variance-reduction terms differs
            assert np.max(np.abs(reference(data, x0, [(p, np.zeros_like(a)) for p, a in infos], 4, 0.1, 0.7, False)
                                 - ref)) > 1e-3


def test_participants_and_anchor_frequency():
    """Over R rounds A of N clients take part each round, each client about A/N of the rounds;
    a participant is an anchor with probability p: the count is Binomial(R A, p)."""
    data, counts = problem(n=8)
    R, A, p = 300, 4, 0.3
    m = fedamd(loss, local_steps=1, local_lr=0.1, batch_size=1, clients_per_round=A, anchor_probability=p)
    _, info = m.run(jax.random.key(2), m.init(jax.random.key(0), jnp.zeros(D), data, counts), data, counts, R)
    part, anch = np.asarray(info.participants), np.asarray(info.anchors)
    assert np.all(part.sum(1) == A) and not np.any(anch & ~part)
    per_client = part.sum(0)
    se = math.sqrt(R * (A / 8) * (1 - A / 8))
    assert np.all(np.abs(per_client - R * A / 8) <= Z * se), per_client
    n, k = R * A, anch.sum()
    assert abs(k - n * p) <= Z * math.sqrt(n * p * (1 - p)), (k, n * p)
    assert abs(k - n * 0.4) > Z * math.sqrt(n * 0.4 * 0.6)  # a wrong p would be told apart


def test_dirichlet_split_covers_every_example_once():
    labels = np.repeat(np.arange(10), 50)
    parts = dirichlet_split(labels, 20, 0.1, seed=0)
    allidx = np.concatenate(parts)
    assert len(parts) == 20 and all(len(p) for p in parts)
    assert np.array_equal(np.sort(allidx), np.arange(500))
    classes = [len(np.unique(labels[p])) for p in parts]
    assert np.median(classes) <= 4  # alpha = 0.1: most clients see few of the 10 classes
    assert np.median([len(np.unique(labels[p])) for p in dirichlet_split(labels, 20, 100.0)]) >= 8


def test_bad_input_is_named():
    data, counts = problem()
    with pytest.raises(ValueError, match="clients_per_round=9"):
        fedavg(loss, clients_per_round=9, batch_size=1).init(jax.random.key(0), jnp.zeros(D), data, counts)
    with pytest.raises(ValueError, match="anchor_probability"):
        fedamd(loss, anchor_probability=1.5)
    with pytest.raises(ValueError, match="counts"):
        fedavg(loss, clients_per_round=2, batch_size=1).init(jax.random.key(0), jnp.zeros(D), data, counts[:3])
    with pytest.raises(ValueError, match="local_steps"):
        fedavg(loss, local_steps=0)
    with pytest.raises(ValueError, match="hold no examples"):
        stack_clients([{"x": np.zeros((2, 1))}, {"x": np.zeros((0, 1))}])
