"""The job's minimum aggregation size m: the fewest clients whose inputs one sum may hold.

Why. The round's participant list comes from the server. A server that runs a round with a
victim and a few clients it colludes with (roster clients, so signatures and the roster do not
help) gets a "sum" from which it subtracts its colluders' known inputs and reads the victim's
vector, under masking and HE alike. Nothing in a single round tells a client that the round is
too small: n is the server's choice, and every per-round rule (the certificate quorum, a
threshold) scales with it. So m is fixed once per job, public, in the roster's protocol options
(the operator writes it, the server cannot change it), and every participant enforces it itself:
a client refuses a setup of fewer than m participants, a masking client refuses to sign or
reveal under survivor sets of fewer than m survivors (and its certificate quorum is never below
m), the HE key holder refuses to decrypt a sum of fewer than m verified clients.

Default. m = ⌊2P/3⌋ + 1 of the P clients an honest server asks per round (every client for
AFL, APFL and DeepAFL; ⌈client_fraction · K⌉ for FedAvg/FedProx; the enrolled clients when a
protocol is used on its own). It equals the masking certificate quorum q = max(t, ⌊2P/3⌋ + 1)
of a full round under the default threshold and never exceeds it, so every full round that can
be certified at all already holds m survivors: honest runs keep the dropout tolerance they had
(up to min(k − t, P − q) per round). It keeps masking's collusion bound for every round the
server may set up: with the quorum at least m, two certified survivor sets of a session with n
participants need 2m signatures, impossible while fewer than 2m − n clients collude, so a round
of n ≤ P participants is as safe as a full one (fewer than 2m − P ≈ P/3 colluders); and any sum
then holds at least m − c ≥ P − m + 1 (≈ P/3) honest clients. (Rounds larger than P, possible
when rounds ask a fraction of the roster, have their own ⌊2n/3⌋ + 1 quorum.) Under HE the
victim's input stays hidden among honest inputs while fewer than m − 1 clients collude (with an
honest key holder). What m costs: a round of fewer than m clients is refused, so over
a whole job at most P − m of the clients asked may drop out (the runner leaves a client that
dropped out of later rounds too); a smaller ``--min-clients`` buys more tolerance for less
protection.
"""

from __future__ import annotations

from protocols.errors import ParameterError, TooFewClientsError


def supermajority(clients: int) -> int:
    """⌊2n/3⌋ + 1: more than two thirds of n (the masking quorum's floor and m's default)."""
    return 2 * clients // 3 + 1


def default_min_clients(per_round: int) -> int:
    """m for a job whose honest rounds ask ``per_round`` clients (see the module docstring)."""
    return supermajority(per_round)


def check_min_clients(value, clients: int) -> int:
    """An operator's m for a job of ``clients`` clients: a whole number from 1 to ``clients``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= clients:
        raise ParameterError(f"min_clients must be a whole number from 1 to the job's {clients} clients, got {value!r}")
    return value


def require_min_clients(count: int, minimum: int, what: str) -> None:
    """A participant's refusal of a round, survivor set or sum of fewer than m clients."""
    if count < minimum:
        raise TooFewClientsError(
            f"{what} holds {count} clients, fewer than {minimum}, the job's minimum aggregation size (min_clients in "
            "the roster): a sum this small would give the server one client's input once it subtracts its "
            "colluders'; refusing, nothing more is revealed. An operator who accepts smaller sums lowers "
            "--min-clients for the job"
        )
