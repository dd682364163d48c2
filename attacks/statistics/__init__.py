"""Closed-form attacks on the analytic statistics: counts, class means, singletons, Gram factorisation,
differences of sums and random-buffer inversion. Importing this package registers them."""

from attacks.statistics import buffer, closed_form, difference  # noqa: F401  (registration)
