"""Models with ground truth (``conjugate``), deep generative models (``vae``, ``dvae``,
``air``) and data sets (``data``). Import the submodules: ``from ppl.models import vae``."""
