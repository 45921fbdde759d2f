//! Isolation Forest with scikit-learn's exact scores.
