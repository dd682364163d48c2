"""Secure aggregation by pairwise masking (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020)."""

from protocols.masking.client import MaskingClient
from protocols.masking.server import MaskingServer
from protocols.masking.session import STAGES
from protocols.masking.simulation import MaskedRound, MaskingProtocol, draw_dropouts, simulate_round

__all__ = ["STAGES", "MaskedRound", "MaskingClient", "MaskingProtocol", "MaskingServer", "draw_dropouts", "simulate_round"]
