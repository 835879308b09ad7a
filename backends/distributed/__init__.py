"""Distributed gradient methods with clients on a ``jax.sharding.Mesh`` axis (see README)."""
from .compress import Identity, Message, RandK, TopK, decode, ef21_stepsize, identity, rand_k, top_k
from .ef21 import EF21, EF21Info, EF21State, ef21, ef21_w

__all__ = ["EF21", "EF21Info", "EF21State", "Identity", "Message", "RandK", "TopK", "decode", "ef21",
           "ef21_stepsize", "ef21_w", "identity", "rand_k", "top_k"]
from .diff2 import DIFF2, DIFF2Info, DIFF2State, clipped_mean, diff2, diff2_noise_multipliers, dp_epsilon, dp_gd

__all__ += ["DIFF2", "DIFF2Info", "DIFF2State", "clipped_mean", "diff2", "diff2_noise_multipliers", "dp_epsilon",
            "dp_gd"]
from .fedamd import FedInfo, FedState, Federated, fedamd, fedavg, stack_clients

__all__ += ["FedInfo", "FedState", "Federated", "fedamd", "fedavg", "stack_clients"]
