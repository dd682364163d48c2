"""Privacy attacks on what federated clients transmit; filled in by later work."""
