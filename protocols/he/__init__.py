"""Secure aggregation by additively homomorphic encryption (TenSEAL BFV / CKKS), keys the server never holds."""

from protocols.he.roles import AddOnly, HEClient, HEKeyHolder, HEServer
from protocols.he.simulation import ApproximateCKKSProtocol, BFVProtocol, CKKSProtocol, HEProtocol

__all__ = ["AddOnly", "ApproximateCKKSProtocol", "BFVProtocol", "CKKSProtocol", "HEClient", "HEKeyHolder", "HEProtocol",
           "HEServer"]
