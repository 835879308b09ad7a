"""A checkpoint carries its run's description: ``fit(checkpoint_info=...)`` and ``peek_checkpoint``."""
import jax
import jax.numpy as jnp
import optax
import pytest

from ppl.transforms.fit import CheckpointError, fit, peek_checkpoint, save_checkpoint


def _loss(key, p, batch):
    return jnp.sum((p - jnp.mean(batch)) ** 2)


def test_info_round_trips_and_steps_are_counted(tmp_path):
    path = str(tmp_path / "c.npz")
    info = {"config": {"lr": 0.1, "model": "toy", "sizes": [1, 2]}}
    fit(_loss, optax.sgd(0.1), jnp.zeros(2), key=jax.random.key(0), num_steps=5, data=jnp.arange(8.0),
        batch_size=4, chunk=2, checkpoint=path, progress=False, checkpoint_info=info)
    assert peek_checkpoint(path) == (5, info)
    save_checkpoint(path, {"a": jnp.zeros(2)})
    assert peek_checkpoint(path) == (0, None)


def test_peek_refuses_missing_corrupted_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        peek_checkpoint(str(tmp_path / "none.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="bad.npz"):
        peek_checkpoint(str(bad))


def test_info_must_be_a_json_dict(tmp_path):
    with pytest.raises(TypeError, match="JSON-serializable"):
        save_checkpoint(str(tmp_path / "c.npz"), {"a": jnp.zeros(2)}, info={"f": object()})
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(str(tmp_path / "c.npz"), {"a": jnp.zeros(2)}, info=[1])
    assert not (tmp_path / "c.npz").exists()
