"""ADEV gradients inside ``shard_map`` over two CPU devices, in their own process (the device
count is fixed when JAX starts). Each device takes its half of the data and its own key
``fold_in(key, device)`` (data parallelism). Prints JSON per estimator: with
``check_vma=False``, the largest difference between each device's value-and-gradient and the
same computation outside ``shard_map``; with ``check_vma=True``, the error message.
"""
import json

import jax

from ppl.config import use_compilation_cache

use_compilation_cache()
jax.config.update("jax_num_cpu_devices", 2)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as nd  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from tensorflow_probability.substrates import jax as tfp  # noqa: E402

import ppl  # noqa: E402
from ppl.estimators import MVD, Enum  # noqa: E402
from ppl.transforms import expectation  # noqa: E402
from ppl.transforms import objectives as O  # noqa: E402


def model(x):
    n = x.shape[0]
    c = ppl.sample("c", tfp.distributions.Bernoulli(logits=jnp.zeros(n), dtype=jnp.float32))
    z = ppl.sample("z", nd.Normal(jnp.zeros(n) + 2.0 * c, 1.0).to_event(1))
    ppl.sample("x", nd.Normal(z, 0.5).to_event(1), obs=x)


def guide(phi, x):
    c = ppl.sample("c", tfp.distributions.Bernoulli(logits=phi["a"] * x, dtype=jnp.float32))
    ppl.sample("z", nd.Normal(phi["m"] * x + c, jax.nn.softplus(phi["s"])).to_event(1))


def main():
    mesh = jax.make_mesh((2,), ("b",), axis_types=(jax.sharding.AxisType.Explicit,))
    x = jnp.linspace(-1.0, 2.0, 8)
    xs = jax.device_put(x, NamedSharding(mesh, P("b")))
    phi = {"a": jnp.float32(0.3), "m": jnp.float32(0.5), "s": jnp.float32(0.1)}
    key = jax.random.key(0)
    out = {}
    for name, est in (("score", None), ("enum", {"c": Enum()}), ("mvd", {"c": MVD()})):
        E = expectation(O.elbo(model, guide), estimators=est)

        def vg(p, k, xl, E=E):
            return jax.value_and_grad(lambda q: E.estimate(k, (xl,), (q, xl)))(p)

        def local(p, k, xl):
            v, g = vg(p, jax.random.fold_in(k, jax.lax.axis_index("b")), xl)
            return jax.tree.map(lambda a: a[None], (v, g))

        def per_device(check_vma):
            return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("b")), out_specs=P("b"),
                                         check_vma=check_vma))

        sharded = jax.tree.map(np.asarray, per_device(False)(phi, key, xs))
        diffs = []
        for d in range(2):
            ref = jax.jit(vg)(phi, jax.random.fold_in(key, d), x[4 * d:4 * d + 4])
            diffs.append(max(float(np.max(np.abs(a[d] - np.asarray(b))))
                             for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(ref))))
        try:
            per_device(True)(phi, key, xs)
            error = None
        except ValueError as e:
            error = str(e)
        out[name] = {"diffs": diffs, "error_with_check_vma": error}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
