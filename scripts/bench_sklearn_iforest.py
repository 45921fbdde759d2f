#!/usr/bin/env python3
"""scikit-learn IsolationForest throughput, the counterpart of models/benches/iforest.rs.

Same shape as the Rust bench: 100 trees, max_samples 256, fitted on 10,000
rows of 4 features ~ N(mu=(1.2, 3.4, 5.6, 7.8), 1); reports batch
score_samples rows/s (median of 5 runs over 100,000 rows) and the mean time
of 2,000 single-row score_samples calls. Single-threaded (n_jobs default).

    /opt/sad-venv/bin/python scripts/bench_sklearn_iforest.py

(`scripts/bench-iforest` runs it right after the Rust benchmark.)
"""

import statistics
import time

import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest

MU = np.array([1.2, 3.4, 5.6, 7.8])


def main():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(10_000, 4)) + MU
    rows = rng.normal(size=(100_000, 4)) + MU
    t0 = time.perf_counter()
    model = IsolationForest(n_estimators=100, max_samples=256, random_state=7).fit(train)
    fit_s = time.perf_counter() - t0

    model.score_samples(rows[:1000])  # warm-up
    batch = []
    for _ in range(5):
        t0 = time.perf_counter()
        model.score_samples(rows)
        batch.append(time.perf_counter() - t0)
    batch_rps = len(rows) / statistics.median(batch)

    singles = rows[:2000]
    model.score_samples(singles[:1])
    t0 = time.perf_counter()
    for i in range(len(singles)):
        model.score_samples(singles[i : i + 1])
    single_us = (time.perf_counter() - t0) / len(singles) * 1e6

    print(f"scikit-learn {sklearn.__version__}, numpy {np.__version__}")
    print(f"{'metric':<38}{'value':>16}")
    print(f"{'batch score_samples (100k rows)':<38}{batch_rps:>12,.0f} rows/s")
    print(f"{'single-row score_samples':<38}{single_us:>13.1f} µs")
    print(f"{'fit (100 trees, 10k x 4)':<38}{fit_s * 1e3:>13.1f} ms")


if __name__ == "__main__":
    main()
