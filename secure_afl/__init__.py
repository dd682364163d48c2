"""Analytic federated learning whose clients only ever contribute sums of sufficient statistics.

The one data path: images → backbone features (cached) → public feature map → per-client
statistics (float64) → a protocol round that returns only their sum → the server's Cholesky
solve → evaluation and a results document. See README.md for the command line.
"""

__version__ = "0.1.0"
