"""VAE test log-likelihood on binarized MNIST after a fixed budget, beside the IWAE paper.

Runs the main command (``python -m ppl``) on MNIST with dynamic binarization and prints the
test log-likelihood estimated by importance sampling next to the figures the IWAE paper
(Burda, Grosse, Salakhutdinov 2016, Table 1) reports for a VAE with one stochastic layer.
Architecture differs: ours is the PLDI 2024 Table 1 network (784-200-20 encoder, 10-d latent,
10-200-784 decoder); the paper's is 784-200-200-50 with a 50-d latent and 3280 passes.

Run: ``.venv/bin/python bench/bench_vae_ll.py [--steps 20000] [--mnist-dir ../shared/data/mnist]``
"""
import argparse
import json
import os
import tempfile
import time

from ppl.models import cli

PAPER = {"VAE (k=1), 784-200-200-50, 3280 passes": -86.76, "IWAE (k=5), same": -85.54}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--eval-particles", type=int, default=1000)
    p.add_argument("--objective", default="elbo")
    p.add_argument("--mnist-dir", default=os.environ.get("PPL_MNIST_DIR", os.path.join(
        os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")))
    a = p.parse_args()
    out = tempfile.mkdtemp(prefix="ppl-bench-ll-")
    t0 = time.perf_counter()
    cli.main(["--model", "vae", "--data", "mnist", "--mnist-dir", a.mnist_dir, "--steps", str(a.steps),
              "--objective", a.objective, "--eval-particles", str(a.eval_particles), "--batch-size", "100",
              "--out", out, "--no-progress"])
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    ll = {k: v for k, v in summary.get("metrics", summary).items() if "log_likelihood" in k}
    print(f"\nours ({a.objective}, {a.steps} steps of batch 100, {wall:.0f} s in all): {ll}")
    for name, v in PAPER.items():
        print(f"paper {name}: {v}")


if __name__ == "__main__":
    main()
