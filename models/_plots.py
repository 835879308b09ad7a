"""PNG plots for the deep generative models (matplotlib, Agg backend, files only)."""
from __future__ import annotations

import os

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curve(path, history, *, label="loss (negative objective per example)", curves=None,
                   title="training loss"):
    """``history``: losses per step; ``curves``: optional ``{name: losses}`` drawn together.

    Long curves are drawn as a moving average over ``len // 50`` steps, and the title says so. Returns ``path``, or None (and writes nothing) when there is no step to draw.
    """
    curves = {k: np.asarray(h, np.float64) for k, h in (curves or {label: history}).items()}
    curves = {k: h for k, h in curves.items() if h.size}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    widths = set()
    for name, h in curves.items():
        w = max(1, h.size // 50)
        widths.add(w)
        smooth = np.convolve(h, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(smooth.size) + w - 1, smooth, label=name)
    ax.set_xlabel("step")
    smoothed = sorted(w for w in widths if w > 1)
    ax.set_ylabel(label if curves.keys() == {label} else "loss", fontsize=9)
    note = f"\nsmoothed: moving average over {', '.join(map(str, smoothed))} steps" if smoothed else ""
    ax.set_title(title + note, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(path, rows, image_shape, *, titles=None, suptitle=None):
    """``rows``: a list of arrays (n, D) drawn as rows of images; ``titles`` label the rows."""
    plt = _plt()
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8, len(rows) * 0.9 + (0.3 if suptitle else 0)),
                             squeeze=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    for i, r in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(r):
                ax.imshow(np.asarray(r[j]).reshape(image_shape), cmap="gray", vmin=0, vmax=1)
        if titles:
            axes[i][0].set_title(titles[i], fontsize=7, loc="left")
    fig.tight_layout(rect=(0, 0, 1, 0.92 if suptitle else 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def boxes(path, canvases, image_shape, boxes_per_canvas, titles=None, suptitle=None):
    """Canvases with rectangles ``(x0, y0, w, h)`` in pixels (one list per canvas, in step
    order); a legend says which colour is which step."""
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    n = len(canvases)
    fig, axes = plt.subplots(1, n, figsize=(n * 1.4, 2.2), squeeze=False)
    colors = ["r", "g", "b", "y"]
    steps = max((len(b) for b in boxes_per_canvas), default=0)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    if steps:
        fig.legend([Line2D([], [], color=colors[c % 4]) for c in range(steps)],
                   [f"object {c + 1}" for c in range(steps)], loc="lower center", ncol=steps, fontsize=7,
                   frameon=False)
    for j in range(n):
        ax = axes[0][j]
        ax.axis("off")
        ax.imshow(np.asarray(canvases[j]).reshape(image_shape), cmap="gray", vmin=0, vmax=1)
        for c, (x0, y0, w, h) in enumerate(boxes_per_canvas[j]):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, color=colors[c % 4], lw=1.2))
        if titles:
            ax.set_title(titles[j], fontsize=7)
    fig.tight_layout(rect=(0, 0.12 if steps else 0, 1, 0.9 if suptitle else 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ensure_dir(path):
    os.makedirs(path, exist_ok=True)
    return path
