#!/usr/bin/env python3
"""Golden data for the Isolation Forest parity test (models/tests/iforest_parity.rs).

Fits scikit-learn IsolationForest models on small synthetic data with injected
outliers, exports every tree (feature, threshold, children, n_node_samples and
the per-tree feature sub-set), max_samples_, offset_ and the training
score_samples, plus score_samples / decision_function / predict for test rows
that include rows far outside the training range and rows placed exactly on
tree thresholds (to exercise scikit-learn's float32 cast before comparison).

Regenerate (scikit-learn 1.9.1, numpy 2.x):

    /opt/sad-venv/bin/python scripts/sklearn_golden.py

which rewrites models/tests/data/iforest_golden.json. Floats are written as
JSON strings holding Python's repr (round-trip precision): serde_json's
default number parser can be one ulp off, and a threshold one ulp off can
send a row that sits exactly on it the other way; the test parses the
strings with Rust's exact `str::parse::<f64>`.
"""

import json
import os
import sys

import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest

OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "models",
    "tests",
    "data",
    "iforest_golden.json",
)


def F(v):
    """A float as its exact repr string."""
    return repr(float(v))


def make_data(rng, n_rows, n_features, n_outliers):
    """Correlated-ish Gaussian inliers plus a few far outliers."""
    mu = rng.uniform(-3.0, 3.0, size=n_features)
    scale = rng.uniform(0.5, 2.0, size=n_features)
    x = rng.normal(size=(n_rows, n_features)) * scale + mu
    out = rng.choice(n_rows, size=n_outliers, replace=False)
    x[out] += rng.choice([-1.0, 1.0], size=(n_outliers, n_features)) * rng.uniform(
        4.0, 8.0, size=(n_outliers, n_features)
    ) * scale
    return x


def export_tree(est, features, subsample):
    t = est.tree_
    return {
        "feature": [int(v) for v in t.feature],
        "threshold": [F(v) for v in t.threshold],
        "children_left": [int(v) for v in t.children_left],
        "children_right": [int(v) for v in t.children_right],
        "n_node_samples": [int(v) for v in t.n_node_samples],
        "estimator_features": [int(v) for v in features] if subsample else None,
    }


def threshold_rows(model, base, rng, n):
    """Rows whose value in one feature sits exactly on a split threshold,
    or on the float32 neighbours of it (where a float64 compare would differ)."""
    rows = []
    subsample = model._max_features != base.shape[1]
    for k in range(n):
        ti = int(rng.integers(len(model.estimators_)))
        tree = model.estimators_[ti].tree_
        feats = model.estimators_features_[ti]
        internal = np.flatnonzero(tree.children_left >= 0)
        node = int(rng.choice(internal))
        local = int(tree.feature[node])
        f = int(feats[local]) if subsample else local
        thr = float(tree.threshold[node])
        row = base[int(rng.integers(len(base)))].copy()
        kind = k % 4
        if kind == 0:
            row[f] = thr  # float64 threshold itself: float32 cast may round up
        elif kind == 1:
            row[f] = float(np.float32(thr))  # nearest float32
        elif kind == 2:
            row[f] = float(np.nextafter(np.float32(thr), np.float32(np.inf)))
        else:
            row[f] = float(np.nextafter(np.float32(thr), np.float32(-np.inf)))
        rows.append(row)
    return np.array(rows)


def case(name, seed, n_rows, n_features, params):
    rng = np.random.default_rng(seed)
    x_train = make_data(rng, n_rows, n_features, n_outliers=max(1, n_rows // 25))
    model = IsolationForest(random_state=seed, **params).fit(x_train)
    subsample = model._max_features != n_features

    inliers = make_data(rng, 100, n_features, n_outliers=5)
    lo, hi = x_train.min(axis=0), x_train.max(axis=0)
    span = hi - lo
    far = np.vstack(
        [
            lo - span * rng.uniform(0.1, 3.0, size=(20, n_features)),
            hi + span * rng.uniform(0.1, 3.0, size=(20, n_features)),
            np.full((1, n_features), 1e6),
            np.full((1, n_features), -1e6),
        ]
    )
    on_thr = threshold_rows(model, x_train, rng, 120)
    x_test = np.vstack([x_train[:40], inliers, far, on_thr])

    contamination = params.get("contamination", "auto")
    return {
        "name": name,
        "params": {k: v for k, v in params.items()} | {"random_state": seed},
        "model": {
            "n_features": n_features,
            "max_samples": int(model.max_samples_),
            "offset": F(model.offset_),
            "contamination": None if contamination == "auto" else F(contamination),
            "train_score_samples": [F(v) for v in model.score_samples(x_train)],
            "trees": [
                export_tree(est, feats, subsample)
                for est, feats in zip(model.estimators_, model.estimators_features_)
            ],
        },
        "test": {
            "rows": [[F(v) for v in r] for r in x_test],
            "score_samples": [F(v) for v in model.score_samples(x_test)],
            "decision_function": [F(v) for v in model.decision_function(x_test)],
            "predict": [int(v) for v in model.predict(x_test)],
        },
    }


def main():
    if sklearn.__version__ != "1.9.1":
        print(f"warning: golden made with scikit-learn {sklearn.__version__}, expected 1.9.1",
              file=sys.stderr)
    golden = {
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "cases": [
            case(
                "contamination_0.05",
                0,
                300,
                5,
                {"n_estimators": 25, "max_samples": 128, "contamination": 0.05},
            ),
            case(
                "auto_max_features_0.6",
                1,
                200,
                5,
                {"n_estimators": 10, "max_samples": 64, "max_features": 0.6},
            ),
        ],
    }
    text = json.dumps(golden, separators=(",", ":"))
    with open(OUT, "w") as fh:
        fh.write(text)
        fh.write("\n")
    print(f"wrote {os.path.normpath(OUT)} ({len(text) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
