"""The main command: ``python -m ppl`` trains a deep generative model on digits or MNIST.

It sits in the top layer (it chooses models, estimators and optimizers); ``ppl/__main__.py``
only launches it by module name when ``python -m ppl`` runs.

Strings exist only here, at the command-line boundary: ``--estimator z=mvd`` is looked up
in the explicit table :data:`ESTIMATORS` and becomes an estimator *object*; ``--objective``
names a function of :mod:`ppl.transforms.objectives`. Every bad flag is reported before
training starts (the objective is traced once with :meth:`Expectation.plan`), as one line
on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import jax
import numpy as np
import optax

from ppl import estimators
from ppl.backends import optim
from ppl.config import use_compilation_cache
from ppl.distributions import MissingExtraError
from ppl.transforms import EstimatorError, expectation
from ppl.transforms import objectives as O
from ppl.transforms.fit import CheckpointError, NonFiniteError, fit, peek_checkpoint

from . import _plots, _tasks, air, data

__all__ = ["main", "build_parser", "make_optimizer", "ESTIMATORS", "OBJECTIVES", "OPTIMIZERS", "UsageError"]


class UsageError(Exception):
    """A bad flag or input: reported as one line, exit code 2, no traceback."""


def _est(cls, **kw):
    def make():
        return cls(**kw)
    make.cls_name = cls.__name__
    return make


#: ``--estimator ADDRESS=NAME``: name -> factory of an estimator object.
ESTIMATORS = {
    "reparam": _est(estimators.Reparam),
    "score": _est(estimators.ScoreFunction),
    "loo": _est(estimators.LeaveOneOut, num_samples=4),
    "enum": _est(estimators.Enum),
    "mvd": _est(estimators.MVD),
    "arm": _est(estimators.ARM),
    "disarm": _est(estimators.DisARM),
    "gumbel": _est(estimators.GumbelSoftmax, temperature=0.5),
    "straight-through": _est(estimators.StraightThrough, temperature=1.0),
}

#: ``--objective NAME``: (function name in ppl.transforms.objectives, takes --particles).
OBJECTIVES = {"elbo": ("elbo", False), "elbo-stl": ("elbo_stl", False), "iwae": ("iwae", True),
              "iwae-dreg": ("iwae_dreg", True), "iwae-stl": ("iwae_stl", True), "vimco": ("vimco", True)}

#: estimator class name -> its ``--estimator`` name, to word the library's errors in flags.
_FLAG_OF_CLASS = {make.cls_name: name for name, make in ESTIMATORS.items()}


def _in_flag_terms(message):
    """The library names estimators by class (``Enum()``); the command line by flag (``enum``)."""
    for cls, flag in _FLAG_OF_CLASS.items():
        message = re.sub(rf"\b{cls}\(\)", repr(flag), message)
        message = re.sub(rf"^{cls} at site", f"estimator {flag!r} at site", message)
    return message


#: ``--optimizer NAME``: name -> the hyperparameter flags it takes (besides --lr). Built by
#: :func:`make_optimizer`; ppl's own optimizers come from :mod:`ppl.backends.optim`.
OPTIMIZERS = {
    "adam": ("b1", "b2", "weight_decay"),
    "sgd": ("momentum",),
    "diffgrad": ("b1", "b2", "weight_decay"),
    "mfac": ("mfac_grads", "damping", "momentum", "weight_decay"),
    "rm3": (),
}
_OPT_DEFAULTS = {"b1": 0.9, "b2": 0.999, "weight_decay": 0.0, "momentum": 0.0, "mfac_grads": 32, "damping": 1e-5}

MODELS = ("vae", "dvae", "air")
_DEFAULT_STEPS = {"vae": 2000, "dvae": 1500, "air": 400}


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m ppl",
        description="Train a deep generative model (VAE, discrete VAE, AIR) with a chosen variational "
                    "objective and per-site gradient estimators; prints the estimation plan and final "
                    "metrics, writes plots, a JSON summary and checkpoints.",
        epilog="estimators: " + ", ".join(ESTIMATORS) + ".  Sites: vae 'z'; dvae 'z'; air 'present', "
               "'where', 'what' (or one step, e.g. 'present/0').  Example: python -m ppl --model dvae "
               "--estimator z=disarm --steps 500.  Air presets: --air-hybrid (Enum at step 0, MVD after).")
    p.add_argument("--model", default="vae", help="vae | dvae | air (default vae)")
    p.add_argument("--objective", default="elbo", help=" | ".join(OBJECTIVES) + " (default elbo)")
    p.add_argument("--particles", type=int, default=5, metavar="K", help="particles K for iwae*/vimco (default 5)")
    p.add_argument("--estimator", action="append", default=[], metavar="ADDR=NAME",
                   help="estimator of the random choices at ADDR (repeatable), e.g. z=reparam")
    p.add_argument("--air-hybrid", action="store_true", help="AIR: Enum for step 0's presence, MVD for later steps")
    p.add_argument("--strict", action="store_true",
                   help="refuse to train unless the plan proves the gradient unbiased (expectation(..., strict=True))")
    p.add_argument("--data", default="digits", help="digits (bundled, default) | mnist")
    p.add_argument("--mnist-dir", default=None, metavar="PATH", help="MNIST IDX folder (or env PPL_MNIST_DIR)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: vae 2000, dvae 1500, air 400)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adam", help=" | ".join(OPTIMIZERS) + " (default adam); rm3 is the "
                   "median of the last three gradients followed by SGD")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--b1", type=float, default=None, help="adam, diffgrad: first-moment decay (default 0.9)")
    p.add_argument("--b2", type=float, default=None, help="adam, diffgrad: second-moment decay (default 0.999)")
    p.add_argument("--momentum", type=float, default=None, help="sgd, mfac: momentum in [0, 1) (default 0)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="adam, diffgrad, mfac: L2 penalty added to the gradient (default 0)")
    p.add_argument("--mfac-grads", type=int, default=None, metavar="M",
                   help="mfac: gradients in the sliding window (default 32)")
    p.add_argument("--damping", type=float, default=None, help="mfac: damping lambda of the Fisher (default 1e-5)")
    p.add_argument("--latent", type=int, default=None, help="latent size (vae 10, dvae 8; dvae Enum needs <= 12)")
    p.add_argument("--hidden", type=int, default=None, help="hidden units per layer (default 200 vae, 64 dvae/air)")
    p.add_argument("--eval-particles", type=int, default=None, metavar="K",
                   help="particles K of the test log-likelihood, vae and dvae (default 1000 on digits, 100 on "
                        "MNIST)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/<model>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.npz if present (the run's flags must match the checkpoint's)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over even though DIR/checkpoint.npz exists (it is replaced at the first checkpoint)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although flags differ from the checkpoint's run (e.g. a new --lr)")
    p.add_argument("--chunk", type=int, default=100, help="steps per compiled chunk / checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="JAX's persistent compilation cache: later runs of the same configuration skip "
                        "compiling (default $PPL_JAX_CACHE or ~/.cache/ppl/jax)")
    p.add_argument("--no-cache", action="store_true", help="no persistent compilation cache")
    return p


def _parse_address(text):
    parts = tuple(int(s) if s.isdigit() else s for s in text.split("/"))
    return parts[0] if len(parts) == 1 else parts


def _estimators(flags, model_name, hybrid):
    mapping = {}
    for f in flags:
        addr, sep, name = f.partition("=")
        if not sep or not addr or not name:
            raise UsageError(f"--estimator {f!r}: expected ADDRESS=NAME, e.g. z=reparam")
        if name not in ESTIMATORS:
            raise UsageError(f"--estimator {f!r}: unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
        mapping[_parse_address(addr)] = ESTIMATORS[name]()
    if hybrid:
        if model_name != "air":
            raise UsageError("--air-hybrid applies to --model air only")
        mapping = {**air.hybrid_estimators(), **mapping}
    return mapping


def _load_data(args):
    if args.data == "digits":
        if args.mnist_dir:
            raise UsageError("--mnist-dir given but --data is digits; add --data mnist")
        return data.load("digits")
    if args.data == "mnist":
        try:
            return data.load("mnist", path=args.mnist_dir)
        except data.DataError as e:
            raise UsageError(" ".join(str(e).split())) from None
    raise UsageError(f"--data {args.data!r}: unknown data set; choose digits or mnist")


def _check_numbers(args):
    for name in ("particles", "batch_size", "eval_particles", "chunk"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("steps", "latent", "hidden"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "steps" else 1):
            raise UsageError(f"--{name} must be {'>= 0' if name == 'steps' else '>= 1'}, got {v}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0, got {args.lr}")


def make_optimizer(args):
    """The optax optimizer named by ``--optimizer`` with its hyperparameter flags; a flag that
    does not apply to that optimizer, or a bad value, is a :class:`UsageError`."""
    name = args.optimizer
    if name not in OPTIMIZERS:
        raise UsageError(f"--optimizer {name!r}: unknown optimizer; choose one of {', '.join(OPTIMIZERS)}")
    for flag in _OPT_DEFAULTS:
        if getattr(args, flag) is not None and flag not in OPTIMIZERS[name]:
            users = [k for k, v in OPTIMIZERS.items() if flag in v]
            raise UsageError(f"--{flag.replace('_', '-')} applies to --optimizer {' / '.join(users)}, "
                             f"not {name}")
    hp = {k: (_OPT_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k)) for k in OPTIMIZERS[name]}
    try:
        if name == "adam":
            _check_unit("b1", hp["b1"])
            _check_unit("b2", hp["b2"])
            if hp["weight_decay"] < 0:
                raise ValueError(f"--weight-decay must be >= 0, got {hp['weight_decay']}")
            adam = optax.adam(args.lr, b1=hp["b1"], b2=hp["b2"])
            return optax.chain(optax.add_decayed_weights(hp["weight_decay"]), adam) if hp["weight_decay"] else adam
        if name == "sgd":
            _check_unit("momentum", hp["momentum"])
            return optax.sgd(args.lr, momentum=hp["momentum"] or None)
        if name == "diffgrad":
            return optim.diffgrad(args.lr, b1=hp["b1"], b2=hp["b2"], weight_decay=hp["weight_decay"])
        if name == "mfac":
            return optim.mfac(args.lr, num_grads=hp["mfac_grads"], damping=hp["damping"], momentum=hp["momentum"],
                              weight_decay=hp["weight_decay"])
        return optax.chain(optim.rm3(), optax.sgd(args.lr))
    except ValueError as e:
        raise UsageError(f"--optimizer {name}: {e}") from None


def _check_unit(flag, value):
    if not 0 <= value < 1:
        raise ValueError(f"--{flag} must lie in [0, 1), got {value}")


def _objective(args, model, guide, mapping):
    fname, takes_k = OBJECTIVES[args.objective]
    fn = getattr(O, fname)
    try:
        obj = fn(model, guide, args.particles) if takes_k else fn(model, guide)
    except ValueError as e:
        raise UsageError(f"--objective {args.objective}: {e}") from None
    return expectation(obj, estimators=mapping or None, strict=args.strict)


def setup(args):
    """Validate every flag and build the task; raises :class:`UsageError` on bad input."""
    if args.model not in MODELS:
        raise UsageError(f"--model {args.model!r}: unknown model; choose one of {', '.join(MODELS)}")
    if args.objective not in OBJECTIVES:
        raise UsageError(f"--objective {args.objective!r}: unknown objective; choose one of {', '.join(OBJECTIVES)}")
    _check_numbers(args)
    make_optimizer(args)  # checks the optimizer's flags before anything is built
    mapping = _estimators(args.estimator, args.model, args.air_hybrid)
    ds = _load_data(args)
    if args.batch_size > ds.x_train.shape[0]:
        raise UsageError(f"--batch-size {args.batch_size} exceeds the {ds.x_train.shape[0]} training examples")
    try:
        task = getattr(_tasks, args.model)(args, ds)
    except MissingExtraError as e:
        raise UsageError(str(e)) from None
    E = _objective(args, task.model, task.guide, mapping)
    try:
        plan = task.plan(E)
    except Exception as e:  # estimator errors surface here, at trace time
        if isinstance(e, (EstimatorError, KeyError, TypeError, ValueError)):
            raise UsageError(_in_flag_terms(" ".join(str(e).strip("'\"").split()))) from None
        raise
    if args.strict and not plan.unbiased:
        raise UsageError(f"--strict: the gradient estimate is not proven unbiased:\n{plan}")
    return task, E, plan


def _compilation_cache(args):
    """``--cache-dir`` / ``--no-cache``: the cache path in use, or None."""
    return None if args.no_cache else use_compilation_cache(args.cache_dir)


def run(args):
    cache = _compilation_cache(args)
    task, E, plan = setup(args)
    out = _plots.ensure_dir(args.out or os.path.join("runs", args.model))
    steps = _DEFAULT_STEPS[args.model] if args.steps is None else args.steps
    ckpt = os.path.join(out, "checkpoint.npz")
    config = _run_config(args, task)
    resumed_at = _check_checkpoint(args, ckpt, config, steps)  # refuses before anything is printed
    print(f"model {args.model} on {task.data_name}; objective {args.objective}"
          + (f" (K={args.particles})" if OBJECTIVES[args.objective][1] else "") + f"; {steps} steps; optimizer "
          + args.optimizer + "".join(f" {k}={v}" for k, v in {"lr": args.lr, **_optimizer_flags(args)}.items()))
    print(plan)
    key = jax.random.key(args.seed)
    k_init, k_fit, k_eval = jax.random.split(key, 3)
    params = task.init(k_init)
    if resumed_at is not None:
        print(f"resumed at step {resumed_at} from {ckpt}")
    t0 = time.time()
    try:
        res = fit(task.loss(E), make_optimizer(args), params, key=k_fit, num_steps=steps, data=task.train,
                  batch_size=args.batch_size, chunk=min(args.chunk, max(steps, 1)), checkpoint=ckpt,
                  resume=resumed_at is not None, progress=False if args.no_progress else None,
                  compiler_options=task.compiler_options, checkpoint_info={"config": config})
    except NonFiniteError as e:
        print(f"ppl: training stopped: {e}", file=sys.stderr)
        return 1
    except CheckpointError as e:
        raise UsageError(" ".join(str(e).split())) from None
    train_s = time.time() - t0
    metrics = task.metrics(k_eval, res.params)
    plots = task.plots(out, res.params, res.history)
    summary = {"model": args.model, "data": task.data_name, "objective": args.objective,
               "particles": args.particles if OBJECTIVES[args.objective][1] else None,
               "estimators": [{"address": r["address"], "estimator": r["estimator"], "unbiased": r["unbiased"],
                               "verdict": r["verdict"], "findings": list(r["findings"])}
                              for r in plan.rows],
               "steps": int(res.state.step), "resumed_at_step": resumed_at,
               "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
               "optimizer": {"name": args.optimizer, **_optimizer_flags(args)},
               "compilation_cache": cache, "compiler_options": task.compiler_options,
               "train_seconds": round(train_s, 2),
               "final_loss_mean_last_100": float(np.mean(res.history[-100:])) if len(res.history) else None,
               "metrics": metrics, "plots": plots, "checkpoint": ckpt if os.path.exists(ckpt) else None}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    print(f"trained in {train_s:.1f}s; plots: {', '.join(plots)}")
    print(f"summary: {os.path.join(out, 'summary.json')}"
          + (f"; checkpoint: {ckpt}" if summary["checkpoint"] else "; no checkpoint (no step was run)"))
    return 0


def _run_config(args, task) -> dict:
    """What a checkpoint's run was: the flags that change the trained parameters (JSON values)."""
    takes_k = OBJECTIVES[args.objective][1]
    cfg = {"model": args.model, "data": task.data_name, "objective": args.objective,
           "particles": args.particles if takes_k else None, "estimators": sorted(args.estimator),
           "air_hybrid": bool(args.air_hybrid), "optimizer": args.optimizer, "lr": args.lr,
           **{f"optimizer_{k}": v for k, v in _optimizer_flags(args).items()},
           "batch_size": args.batch_size, "latent": args.latent, "hidden": args.hidden, "seed": args.seed}
    return json.loads(json.dumps(cfg))


def _check_checkpoint(args, ckpt, config, steps):
    """The step to resume at (None: start from scratch); refuses what would lose or mix runs."""
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one")
    if not os.path.exists(ckpt):
        return None
    try:
        done, info = peek_checkpoint(ckpt)
    except CheckpointError as e:
        raise UsageError(" ".join(str(e).split())) from None
    if not args.resume:
        if args.overwrite:
            return None
        raise UsageError(f"{ckpt} already holds a run of {done} steps: pass --resume to continue it, or "
                         "--overwrite to start over and replace it (or choose another --out)")
    saved = (info or {}).get("config")
    if not isinstance(saved, dict):
        raise UsageError(f"--resume: {ckpt} holds no run configuration (it was not written by python -m ppl); "
                         "pass --overwrite to start over")
    diff = [k for k in sorted(set(saved) | set(config)) if saved.get(k) != config.get(k)]
    if diff and not args.allow_config_change:
        said = "; ".join(f"{k} {saved.get(k)!r} in the checkpoint, {config.get(k)!r} now" for k in diff)
        raise UsageError(f"--resume: this run differs from the checkpoint's: {said}. Rerun with the "
                         "checkpoint's flags, or pass --allow-config-change to continue anyway")
    if steps < done:
        raise UsageError(f"--steps {steps} is below the {done} steps the checkpoint has already run; pass "
                         f"--steps {done} or more to continue it")
    return done


def _optimizer_flags(args):
    return {k: (_OPT_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k)) for k in OPTIMIZERS[args.optimizer]}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"ppl: error: {e}", file=sys.stderr)
        return 2
