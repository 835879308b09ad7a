"""Optimizers and gradient transformations of ppl's source papers, as optax transformations.

Every optimizer here is an optax ``GradientTransformationExtraArgs`` (pure ``init`` / ``update``
with an explicit pytree state), composable with ``optax.chain`` and usable with
:func:`ppl.transforms.fit.fit`:

- :func:`diffgrad`, :func:`scale_by_diffgrad`: diffGrad (v2 update).
- :func:`mfac`, :func:`scale_by_mfac`: M-FAC, inverse empirical-Fisher-vector products over a
  sliding window of gradients.
- :func:`winsorize`, :func:`m3` (per-example gradients in), :func:`rm3`, :func:`m_coherence`,
  :func:`per_example_grads`, :func:`aggregated_loss`: coherence-based robust aggregation.
- :func:`pixel_grad_clip`: pixel-wise gradient clipping, an identity with a clipped cotangent
  (a function applied to a decoder's output, not an optax transformation).

Equations, sources and sharp edges: ``backends/README.md`` and each function's docstring.
"""
from ._diffgrad import ScaleByDiffGradState, diffgrad, scale_by_diffgrad
from ._mfac import ScaleByMFACState, mfac, scale_by_mfac
from ._pgc import pixel_grad_clip
from ._robust import RM3State, aggregated_loss, m3, m_coherence, per_example_grads, rm3, winsorize

__all__ = ["diffgrad", "scale_by_diffgrad", "ScaleByDiffGradState",
           "mfac", "scale_by_mfac", "ScaleByMFACState",
           "winsorize", "m3", "rm3", "RM3State", "m_coherence", "per_example_grads", "aggregated_loss",
           "pixel_grad_clip"]
