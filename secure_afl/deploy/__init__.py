"""Our protocols deployed over Flower: a SuperLink, one SuperNode per site, real processes and networks.

Flower carries the messages (and TLS, node authentication, the process model); every byte it carries
for us is our own versioned wire format (protocols/wire.py), never pickle. The ServerApp
(``server_app``) drives the same rounds as the in-process runner (``secure_afl.runner.run_rounds``),
one push / pull of Flower messages per protocol stage under its own deadline, and records the same
transcript; the ClientApp (``client_app``) answers each stage in a fresh process with the client role
state machine restored from the node's ``Context.state``, and the algorithm's client rebuilt from the
job, the site's rows and the calls of the rounds it answered (any number of rounds: AFL, DeepAFL,
FedAvg; DP on the statistics with the noise drawn at the site; APFL, whose personalized models stay at
their sites, which report only their held-out accuracy). ``local`` starts a whole federation on loopback (``secure-afl deploy local``); ``simulate``
runs the same apps on Flower's simulation engine (Ray), thousands of virtual nodes on one machine
(``secure-afl deploy simulate``). Flower (with Ray) is an optional dependency
(``pip install secure-afl[deploy]``).
"""
