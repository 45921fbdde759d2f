//! Evaluation: ROC-AUC, average precision, SKAB protocol, NAB v1 scorer.
