"""Secure aggregation by pairwise masking (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020), actively secure:
signed messages checked against the job's roster and a consistency round before any share is revealed."""

from protocols.dropouts import draw_dropouts
from protocols.masking.client import MaskingClient
from protocols.masking.server import MaskingServer
from protocols.masking.session import STAGES, MaskingOptions
from protocols.masking.simulation import MaskedRound, MaskingProtocol, enrol_for, simulate_round

__all__ = ["STAGES", "MaskedRound", "MaskingClient", "MaskingOptions", "MaskingProtocol", "MaskingServer", "draw_dropouts",
           "enrol_for", "simulate_round"]
