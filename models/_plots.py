"""PNG plots for the deep generative models (matplotlib, Agg backend, files only)."""
from __future__ import annotations

import os

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curve(path, history, *, label="loss (negative objective per example)", curves=None):
    """``history``: losses per step; ``curves``: optional ``{name: losses}`` drawn together."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = curves or {label: history}
    for name, h in curves.items():
        h = np.asarray(h, np.float64)
        if h.size == 0:
            continue
        w = max(1, h.size // 50)
        smooth = np.convolve(h, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(smooth.size) + w - 1, smooth, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(path, rows, image_shape, *, titles=None):
    """``rows``: a list of arrays (n, D) drawn as rows of images."""
    plt = _plt()
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.8, len(rows) * 0.9), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(r):
                ax.imshow(np.asarray(r[j]).reshape(image_shape), cmap="gray", vmin=0, vmax=1)
        if titles:
            axes[i][0].set_title(titles[i], fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def boxes(path, canvases, image_shape, boxes_per_canvas, titles=None):
    """Canvases with rectangles ``(x0, y0, w, h)`` in pixels (one list per canvas)."""
    plt = _plt()
    from matplotlib.patches import Rectangle

    n = len(canvases)
    fig, axes = plt.subplots(1, n, figsize=(n * 1.4, 1.7), squeeze=False)
    colors = ["r", "g", "b", "y"]
    for j in range(n):
        ax = axes[0][j]
        ax.axis("off")
        ax.imshow(np.asarray(canvases[j]).reshape(image_shape), cmap="gray", vmin=0, vmax=1)
        for c, (x0, y0, w, h) in enumerate(boxes_per_canvas[j]):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, color=colors[c % 4], lw=1.2))
        if titles:
            ax.set_title(titles[j], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ensure_dir(path):
    os.makedirs(path, exist_ok=True)
    return path
