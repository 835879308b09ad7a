"""Distributed gradient methods with clients on a ``jax.sharding.Mesh`` axis (see
backends/README.md): EF21 / EF21-W with contractive compressors, DIFF2 / DP-GD with
differential-privacy accounting, FedAMD / FedAvg under partial participation."""
from .compress import Identity, Message, RandK, TopK, decode, ef21_stepsize, identity, rand_k, top_k
from .diff2 import DIFF2, DIFF2Info, DIFF2State, clipped_mean, diff2, diff2_noise_multipliers, dp_epsilon, dp_gd
from .ef21 import EF21, EF21Info, EF21State, ef21, ef21_w
from .fedamd import Federated, FedInfo, FedState, fedamd, fedavg, stack_clients

__all__ = ["DIFF2", "DIFF2Info", "DIFF2State", "EF21", "EF21Info", "EF21State", "FedInfo", "FedState", "Federated",
           "Identity", "Message", "RandK", "TopK", "clipped_mean", "decode", "diff2", "diff2_noise_multipliers",
           "dp_epsilon", "dp_gd", "ef21", "ef21_stepsize", "ef21_w", "fedamd", "fedavg", "identity", "rand_k",
           "stack_clients", "top_k"]
