"""Cost of homomorphic aggregation versus feature dimension d, beside the common deployment default.

For d ∈ {256, 512, 1024, 1280, 2048} (c = 10 classes, so L = d(d+1)/2 + 10d + 11 statistics
values per client) and n clients, all in one run on this machine:
- he-bfv, he-ckks (integer, exact) and he-ckks-approx through the protocol interface: upload
  bytes per value, client encryption time, server addition time, key-holder decryption time,
  the round's end-to-end time, and the error against the float sum;
- the popular deployment default: CKKS N = 8192, coefficient moduli [60, 40, 40], scale 2^40, one
  TenSEAL vector per statistics tensor (full G = XᵀX, H, n, class counts), no packing;
- the masking protocol on the same vectors.
Targets: BFV (exact) spends fewer bytes per value than the default; HE upload ≤ 4× the masking
upload at d = 1280.

    python benchmarks/he_cost.py [--clients 5] [--scale 1]
Writes benchmarks/results/he_cost.json and he_cost.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tenseal as ts
import torch

from protocols import make_protocol
from secure_afl.algorithms.afl import statistics_bound
from secure_afl.results import environment, write_results
from secure_afl.statistics import StatisticsLayout, compute_statistics

RESULTS = Path(__file__).parent / "results"
DIMS = (256, 512, 1024, 1280, 2048)
CLASSES = 10
PROTOCOLS = ("he-bfv", "he-ckks", "he-ckks-approx", "mask")


def statistics_vectors(d: int, clients: int, rows: int = 50, seed: int = 0):
    """Packed statistics of random unit-norm rows (the shape and scale of AFL's), their tensors as the
    deployment default sends them (full G, H, n, counts), and the public bound."""
    rng = np.random.default_rng(seed)
    layout = StatisticsLayout(d, CLASSES)
    vectors, tensors = {}, {}
    for c in range(clients):
        x = rng.standard_normal((rows, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        stats = compute_statistics(x, rng.integers(CLASSES, size=rows), CLASSES)
        tensors[c] = (stats.gram, stats.cross, np.array([float(stats.count)]), stats.class_counts.astype(np.float64))
        vectors[c] = layout.pack(stats)
    return vectors, tensors, statistics_bound(rows, 1.0)


def run_protocol(name: str, vectors: dict, bound: float) -> dict:
    protocol = make_protocol(name)
    start = time.perf_counter()
    result = protocol.aggregate("bench", vectors, bound)
    seconds = time.perf_counter() - start
    length = next(iter(vectors.values())).shape[0]
    regular = max(vectors)  # not the key holder (the lowest id), whose upload includes the context
    details = result.details
    row = {
        "protocol": name,
        "round_s": seconds,
        "upload_bytes_per_client": result.upload_bytes[regular],
        "upload_bytes_per_value": result.upload_bytes[regular] / length,
        "max_abs_error": float(np.abs(result.total - sum(vectors.values())).max()),
    }
    if name.startswith("he-"):
        row.update(
            client_encrypt_s=details["client_encrypt_seconds"]["mean"],
            server_s=details["server_seconds"],
            key_holder_s=details["key_holder_seconds"],
            fraction_bits=details["fraction_bits"],
            limbs=details["limbs"],
            public_context_bytes=details["public_context_bytes"],
        )
    else:
        stages = details["stages"]
        row.update(client_s=sum(s["client_seconds"]["mean"] for s in stages.values()),
                   server_s=sum(s["server_seconds"] for s in stages.values()), fraction_bits=details["fraction_bits"])
    return row


def deployment_default(tensors: dict, length: int) -> dict:
    """CKKS N=8192 [60,40,40] scale 2^40, one ckks_vector per tensor, server adds, key holder decrypts."""
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40])
    context.global_scale = 2.0**40
    encrypt_s, uploads, total, add_s = [], [], None, 0.0
    for parts in tensors.values():
        start = time.perf_counter()
        blobs = [ts.ckks_vector(context, p.ravel().tolist()).serialize() for p in parts]
        encrypt_s.append(time.perf_counter() - start)
        uploads.append(sum(len(b) for b in blobs))
        vectors = [ts.ckks_vector_from(context, b) for b in blobs]
        start = time.perf_counter()
        total = vectors if total is None else [a + b for a, b in zip(total, vectors)]
        add_s += time.perf_counter() - start
    start = time.perf_counter()
    decrypted = [np.array(v.decrypt()) for v in total]
    decrypt_s = time.perf_counter() - start
    expected = [sum(t[i] for t in tensors.values()).ravel() for i in range(4)]
    values = sum(p.size for p in next(iter(tensors.values())))
    return {
        "protocol": "ckks-default (N=8192, [60,40,40], 2^40, one vector per tensor)",
        "upload_bytes_per_client": uploads[0],
        "upload_bytes_per_value": uploads[0] / values,
        "upload_bytes_per_statistics_value": uploads[0] / length,
        "client_encrypt_s": float(np.mean(encrypt_s)),
        "server_add_s": add_s,
        "decrypt_s": decrypt_s,
        "max_abs_error": float(max(np.abs(a - b).max() for a, b in zip(decrypted, expected))),
        "round_s": float(np.sum(encrypt_s)) + add_s + decrypt_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the client count")
    args = parser.parse_args()
    clients = max(2, round(args.clients * args.scale))
    rows = []
    for d in DIMS:
        vectors, tensors, bound = statistics_vectors(d, clients)
        length = next(iter(vectors.values())).shape[0]
        for name in PROTOCOLS:
            rows.append({"d": d, "length": length, "clients": clients, **run_protocol(name, vectors, bound)})
        rows.append({"d": d, "length": length, "clients": clients, **deployment_default(tensors, length)})
        for r in rows[-len(PROTOCOLS) - 1:]:
            print(f"d={d:5d} {r['protocol'][:14]:14s} {r['upload_bytes_per_value']:7.2f} B/value  "
                  f"round {r['round_s']:6.2f}s  error {r['max_abs_error']:.2e}")
    masking_1280 = next(r for r in rows if r["d"] == 1280 and r["protocol"] == "mask")
    default_1280 = next(r for r in rows if r["d"] == 1280 and r["protocol"].startswith("ckks-default"))
    bfv_1280 = next(r for r in rows if r["d"] == 1280 and r["protocol"] == "he-bfv")
    summary = {
        "bfv_bytes_per_value_d1280": bfv_1280["upload_bytes_per_value"],
        "default_bytes_per_value_d1280": default_1280["upload_bytes_per_value"],
        "default_bytes_per_statistics_value_d1280": default_1280["upload_bytes_per_statistics_value"],
        "bfv_over_masking_upload_d1280": bfv_1280["upload_bytes_per_client"] / masking_1280["upload_bytes_per_client"],
    }
    print(summary)
    document = {
        "schema_version": 1,
        "benchmark": "he_cost",
        "targets": {"bfv_bytes_per_value": "< default's", "he_over_masking_upload_d1280": "<= 4"},
        "summary": summary,
        "rows": rows,
        "environment": environment(torch.device("cpu"), seed=0),
    }
    RESULTS.mkdir(exist_ok=True)
    write_results(RESULTS / "he_cost.json", document, overwrite=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in sorted({r["protocol"] for r in rows}):
        sel = [r for r in rows if r["protocol"] == name]
        dims = [r["d"] for r in sel]
        axes[0].plot(dims, [r["upload_bytes_per_value"] for r in sel], marker="o", label=name)
        timing = [r.get("client_encrypt_s", r.get("client_s")) for r in sel]
        axes[1].semilogy(dims, timing, marker="o", label=name)
    axes[0].set(xlabel="feature dimension d", ylabel="upload bytes per value", title="bytes per value sent by a client")
    axes[1].set(xlabel="feature dimension d", ylabel="seconds", title="client time (encrypt / mask)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "he_cost.png", dpi=120)


if __name__ == "__main__":
    main()
