"""Checkpoints: every corrupted file is a CheckpointError, writes are atomic, stale temporary
files of killed writes are removed (only ours)."""
import io
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppl.transforms import _checkpoint
from ppl.transforms.fit import CheckpointError, fit, kernel, load_checkpoint, save_checkpoint

TINY = {"w": jnp.array([1.5, -2.0, 0.25]), "step": jnp.array(7, jnp.int32), "key": jax.random.key(3)}
HISTORY = np.array([3.0, 2.5], np.float32)


def _leaves(state):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree_util.tree_leaves(state)]


def _same(state, hist, ref_state, ref_hist):
    a, b = _leaves(state), _leaves(ref_state)
    return (len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
            and hist.dtype == ref_hist.dtype and np.array_equal(hist, ref_hist))


def _sweep(raw, template, ref_hist, path, bits):
    """Flip each byte of ``raw`` (bit ``bits(i)``): every load raises CheckpointError or gives
    exactly the original state. Returns the counts."""
    counts = {"refused": 0, "unchanged": 0}
    for i in range(len(raw)):
        for bit in bits(i):
            b = bytearray(raw)
            b[i] ^= 1 << bit
            path.write_bytes(bytes(b))
            try:
                state, hist = load_checkpoint(str(path), template)
            except CheckpointError as e:
                assert str(path) in str(e), e
                counts["refused"] += 1
                continue
            assert _same(state, hist, template, ref_hist), f"byte {i} bit {bit}: a different state loaded silently"
            counts["unchanged"] += 1
    return counts


def test_every_byte_flip_of_a_small_checkpoint_is_refused_or_harmless(tmp_path):
    """One flipped bit in every byte (the bit cycles with the offset): a CheckpointError naming
    the file, or (a flip in a timestamp or another field nothing reads) exactly the saved state.
    Never NotImplementedError (zip version), RuntimeError ("encrypted" flag), KeyError (no
    history) or a silently different state."""
    save_checkpoint(str(tmp_path / "c.npz"), TINY, HISTORY)
    raw = (tmp_path / "c.npz").read_bytes()
    counts = _sweep(raw, TINY, HISTORY, tmp_path / "bad.npz", lambda i: [i % 8])
    assert counts["refused"] > len(raw) // 2, counts


@pytest.mark.slow
def test_every_bit_flip_of_a_real_fit_checkpoint_is_refused_or_harmless(tmp_path):
    """Slow (about 8 x 3,000 loads): every bit of every byte of a checkpoint written by fit."""
    def loss(key, p, batch):
        return jnp.sum((p["w"] - 1.0) ** 2) + p["b"] ** 2

    path = tmp_path / "run.npz"
    r = fit(loss, optax.adam(0.1), {"w": jnp.zeros(2), "b": jnp.array(0.5)}, key=jax.random.key(0),
            num_steps=3, checkpoint=str(path), progress=False)
    raw = path.read_bytes()
    template, hist = load_checkpoint(str(path), r.state)
    counts = _sweep(raw, template, hist, tmp_path / "bad.npz", lambda i: range(8))
    print(f"{len(raw)} bytes, {8 * len(raw)} flips: {counts}")


def _write(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _good_arrays():
    arrays = _checkpoint._flatten(TINY)
    meta = {"format": "ppl-checkpoint-1", "keys": sorted(arrays)}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    arrays["__history__"] = HISTORY
    return arrays


@pytest.mark.parametrize("what,edit,match", [
    ("no history", lambda a: a.pop("__history__"), "no loss history"),
    ("history of ints", lambda a: a.update(__history__=np.arange(3)), "not a float32 vector"),
    ("metadata not json", lambda a: a.update(__meta__=np.frombuffer(b"{not json", np.uint8)), "unreadable metadata"),
    ("metadata not utf-8", lambda a: a.update(__meta__=np.array([255, 254], np.uint8)), "unreadable metadata"),
    ("metadata of floats", lambda a: a.update(__meta__=np.zeros(3)), "unreadable metadata"),
    ("another format", lambda a: a.update(__meta__=np.frombuffer(b'{"format": "x", "keys": []}', np.uint8)),
     "unreadable metadata"),
    ("an unlisted array", lambda a: a.update(extra=np.zeros(2)), r"extra: \['extra'\]"),
    ("a listed array missing", lambda a: a.pop("['w']"), r"missing: \[\"\['w'\]\"\]"),
    ("a string array", lambda a: a.update({"['w']": np.array(["a", "b", "c"])}), "not a numeric array"),
    ("a string extra", lambda a: a.update({"__extra__.batch": np.array(["a"])}), "not a numeric array"),
])
def test_malformed_structure_is_named(tmp_path, what, edit, match):
    arrays = _good_arrays()
    edit(arrays)
    _write(tmp_path / "m.npz", arrays)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(str(tmp_path / "m.npz"), TINY)
    assert "m.npz" in str(info.value), what


def test_files_that_are_not_npz_archives(tmp_path):
    np.save(tmp_path / "bare.npy", np.zeros(3))
    os.replace(tmp_path / "bare.npy", tmp_path / "bare.npz")
    with pytest.raises(CheckpointError, match="not an .npz archive"):
        load_checkpoint(str(tmp_path / "bare.npz"), TINY)
    (tmp_path / "pickle.npz").write_bytes(b"\x80\x04\x95" + bytes(40))
    with pytest.raises(CheckpointError, match="pickle.npz"):
        load_checkpoint(str(tmp_path / "pickle.npz"), TINY)
    os.mkdir(tmp_path / "folder.npz")
    with pytest.raises(CheckpointError, match="folder.npz"):
        load_checkpoint(str(tmp_path / "folder.npz"), TINY)


def test_a_key_of_the_wrong_shape_is_refused(tmp_path):
    save_checkpoint(str(tmp_path / "k.npz"), {**TINY, "key": jax.random.split(jax.random.key(0), 2)})
    with pytest.raises(CheckpointError, match=r"\['key'\] has shape \(2, 2\)"):
        load_checkpoint(str(tmp_path / "k.npz"), TINY)


# --- atomic writes and stale temporary files ---------------------------------------------------
def _failing_writer(seen):
    """``np.savez`` that writes the first half of the real bytes, then fails (a full disk); it
    records the files in the folder at that moment (the temporary file among them)."""
    real = np.savez

    def savez(f, **arrays):
        buf = io.BytesIO()
        real(buf, **arrays)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        seen.extend(os.listdir(os.path.dirname(os.path.abspath(seen[0]))))
        raise OSError(28, "No space left on device")
    return savez


def test_a_write_failing_partway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    save_checkpoint(str(path), TINY, HISTORY)
    before = path.read_bytes()
    seen = [str(path)]
    monkeypatch.setattr(_checkpoint.np, "savez", _failing_writer(seen))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(str(path), {**TINY, "w": jnp.zeros(3)}, np.zeros(5, np.float32))
    monkeypatch.undo()
    assert path.read_bytes() == before
    state, hist = load_checkpoint(str(path), TINY)
    assert _same(state, hist, TINY, HISTORY)
    # the write went to a temporary file next to the checkpoint, never to the checkpoint itself
    tmps = [n for n in seen[1:] if n != "run.npz"]
    assert len(tmps) == 1 and _checkpoint._tmp_pattern(str(path)).match(tmps[0]), seen
    assert os.listdir(tmp_path) == ["run.npz"]  # the failed write's temporary file is gone


def test_stale_temporary_files_are_removed_on_the_next_save_and_only_ours(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    seen = [str(path)]
    monkeypatch.setattr(_checkpoint.np, "savez", _failing_writer(seen))
    with pytest.raises(OSError):
        save_checkpoint(str(path), TINY, HISTORY)
    monkeypatch.undo()
    (real_name,) = [n for n in seen[1:]]
    # what a write killed before its rename leaves (the name the writer really uses, another
    # random part), an older version's leftover, and files that are not ours
    stale = [re.sub(r"\.[a-z0-9_]{8}\.tmp$", ".k1ll3d_x.tmp", real_name), ".ckpt-ab_cd123.npz.tmp"]
    users = ["run.npz.tmp", ".run.npz.tmp", ".run.npz.abcd1234.tmp.bak", ".other.npz.abcd1234.tmp", "notes.tmp",
             ".run.npz.ABCD1234.tmp", "x.run.npz.abcd1234.tmp", ".ckpt-abcd1234.npz.tmp.keep"]
    assert stale[0] != real_name
    for name in stale + users:
        (tmp_path / name).write_bytes(b"partial")
    os.mkdir(tmp_path / ".run.npz.dir12345.tmp")  # a folder with our pattern is not touched
    save_checkpoint(str(path), TINY, HISTORY)
    assert sorted(os.listdir(tmp_path)) == sorted(users + ["run.npz", ".run.npz.dir12345.tmp"])
    assert _same(*load_checkpoint(str(path), TINY), TINY, HISTORY)


def test_fit_resume_refuses_a_checkpoint_without_history(tmp_path):
    def loss(key, p, batch):
        return jnp.sum(p["w"] ** 2)

    path = tmp_path / "run.npz"
    r = fit(loss, optax.sgd(0.1), {"w": jnp.ones(2)}, key=jax.random.key(0), num_steps=2, checkpoint=str(path),
            progress=False)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "__history__"}
    _write(path, arrays)
    with pytest.raises(CheckpointError, match="run.npz.*no loss history"):
        fit(loss, optax.sgd(0.1), {"w": jnp.ones(2)}, key=jax.random.key(0), num_steps=4, checkpoint=str(path),
            resume=True, progress=False)
    assert int(r.state.step) == 2
