"""A malicious server (and the clients it may recruit) as reusable code, against our real client code.

Each driver plays one attack of issue 12, message by message, against client objects it is given
(our honest state machines, or test doubles with one check removed), and returns an ``Outcome``:
what it rebuilt of the victim (exactly, or nothing), who refused and with which typed error, under
which threat model and parameters. Drivers use only what the attacker legitimately holds: the
server's own state, the messages clients answer, and whatever colluding clients hand over; the
victim's vector is never read (tests compare the outcome with it afterwards). This package imports
``protocols`` only.
"""

from attacks.protocol.outcome import Outcome

__all__ = ["Outcome"]
