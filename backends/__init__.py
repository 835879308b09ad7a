"""ppl.backends: the seed papers' other gradient methods, in shapes users already know.

Optimizers are optax ``GradientTransformation``s (``ppl.backends.optim``); training diagnostics
are callbacks for ``fit`` (``ppl.backends.diagnostics``); solvers are kernels
(``ppl.backends.bilevel``: BO-REP; ``ppl.backends.dcdm``: learned conjugate directions) or
functions (``ppl.backends.convex_relu``: convex two-layer ReLU training by ADMM);
distributed methods run with clients on a mesh axis (``ppl.backends.distributed``); fixed-point
networks are trained by holomorphic equilibrium propagation (``ppl.backends.equilibrium``);
``ppl.backends.gbnn`` trains a network's last layer by gradient boosting;
``ppl.backends.hard_constraints`` imposes a PDE as a per-subdomain least-squares layer (a
mixture of Levenberg-Marquardt experts, needs the ``hardconstraints`` extra). Backends may import
``ppl`` and ``ppl.transforms``; ``ppl.models`` and the main command may import them.
"""
