#!/usr/bin/env python3
"""Trains scikit-learn's version of each family on a point-in-time training set that
`streamscore train --export-dataset` wrote, with the same time-based hold-out (the
latest share of rows), and prints hold-out quality and fit time, for the comparison in
training/RESULTS.md. Needs scikit-learn and pandas (pip install scikit-learn pandas).

usage: compare_sklearn.py DATASET.csv {fraud|order_value} [HOLDOUT=0.25] [SAMPLE=20000]
"""
import sys
import time

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier


def main():
    path, target = sys.argv[1], sys.argv[2]
    holdout = float(sys.argv[3]) if len(sys.argv) > 3 else 0.25
    sample = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
    frame = pd.read_csv(path)
    features = frame.drop(columns=["event_id", "time_ms", "label"]).to_numpy(float)
    labels = frame["label"].to_numpy(float)
    cut = int(round(len(frame) * (1.0 - holdout)))
    x_train, y_train = features[:cut], labels[:cut]
    x_test, y_test = features[cut:], labels[cut:]
    width = features.shape[1]

    def prepared(model):
        return make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), model)

    def run(name, model, x, y, score):
        started = time.perf_counter()
        model.fit(x, y)
        seconds = time.perf_counter() - started
        print(f"| {name} | {score(model):.4f} | {seconds:.2f} s | {len(y)} |")

    if target == "order_value":
        print("| scikit-learn family | R^2 | fit time | rows |\n|---|---|---|---|")
        run("Ridge(alpha=1)", prepared(Ridge(alpha=1.0)), x_train, y_train,
            lambda m: r2_score(y_test, m.predict(x_test)))
        return
    auc = lambda m: roc_auc_score(y_test, m.decision_function(x_test))
    auc_proba = lambda m: roc_auc_score(y_test, m.predict_proba(x_test)[:, 1])
    print("| scikit-learn family | ROC-AUC | fit time | rows |\n|---|---|---|---|")
    run("LogisticRegression(C=1, lbfgs)",
        prepared(LogisticRegression(C=1.0, max_iter=1000)), x_train, y_train, auc)
    run("DecisionTreeClassifier(max_depth=10)",
        prepared(DecisionTreeClassifier(max_depth=10, random_state=0)), x_train, y_train, auc_proba)
    run("LinearSVC(C=0.1)", prepared(LinearSVC(C=0.1)), x_train, y_train, auc)
    if sample < len(y_train):
        x_sample, _, y_sample, _ = train_test_split(
            x_train, y_train, train_size=sample, stratify=y_train, random_state=0)
    else:
        x_sample, y_sample = x_train, y_train
    run(f"SVC(rbf, C=1, gamma=1/{width}), stratified sample",
        prepared(SVC(kernel="rbf", C=1.0, gamma=1.0 / width)), x_sample, y_sample, auc)


if __name__ == "__main__":
    main()
