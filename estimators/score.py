"""Score-function (REINFORCE) gradients: :class:`ppl.transforms.ScoreFunction`, re-exported.

The rule lives in ``ppl.transforms`` because ADEV uses it as the default for
distributions without a reparameterized sampler. Wrap it in
:class:`ppl.estimators.Baseline` / :class:`~ppl.estimators.EMABaseline`, or use
:class:`~ppl.estimators.LeaveOneOut`, to reduce its variance.
"""
from ppl.transforms import ScoreFunction

__all__ = ["ScoreFunction"]
