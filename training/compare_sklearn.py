#!/usr/bin/env python3
"""Trains scikit-learn's version of each family on a point-in-time training set that
`streamscore train --export-dataset` wrote, with the same time-based hold-out (the
latest share of rows), and prints hold-out quality and fit time, for the comparison in
training/RESULTS.md. Needs scikit-learn and pandas (pip install scikit-learn pandas).

usage: compare_sklearn.py DATASET.csv {fraud|order_value} [HOLDOUT=0.25] [SAMPLE=20000]
       compare_sklearn.py TABLE.csv table LABEL [HOLDOUT=0.25]

The `table` mode reads a table of your own (numbers, TRUE/FALSE, yes/no and string
columns, a binary LABEL column) and encodes it as streamscore's `target = "binary"` does:
numbers as they are, yes/no as 1/0, strings one-hot over their 100 most frequent values
plus one column for the rest; missing values are imputed with the training mean.
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


BOOLEANS = {"true": 1.0, "yes": 1.0, "false": 0.0, "no": 0.0, "1": 1.0, "0": 0.0}


def encode_table(frame, label):
    """The table's columns encoded as streamscore encodes them, and the 0/1 labels."""
    labels = frame[label].astype(str).str.strip().str.lower().map(BOOLEANS).to_numpy(float)
    columns = []
    for name in frame.columns:
        if name in (label, "event_id", "time_ms"):
            continue
        cells = frame[name]
        present = cells.dropna().astype(str).str.strip()
        numbers = pd.to_numeric(present, errors="coerce")
        if len(present) == 0 or numbers.notna().sum() * 2 > len(present):
            columns.append(pd.to_numeric(cells, errors="coerce").to_numpy(float))
        elif present.str.lower().isin(BOOLEANS.keys()).all():
            text = cells.astype(str).str.strip().str.lower()
            columns.append(text.map(BOOLEANS).where(cells.notna()).to_numpy(float))
        else:
            counts = present.value_counts()
            ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:100]
            vocabulary = [value for value, _ in ranked]
            text = cells.astype(str).str.strip()
            for value in vocabulary:
                columns.append(np.where(cells.isna(), np.nan, (text == value).astype(float)))
            columns.append(np.where(cells.isna(), np.nan, (~text.isin(vocabulary)).astype(float)))
    return np.column_stack(columns), labels


def main():
    path, target = sys.argv[1], sys.argv[2]
    if target == "table":
        label = sys.argv[3]
        holdout = float(sys.argv[4]) if len(sys.argv) > 4 else 0.25
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        features, labels = encode_table(frame, label)
        compare(features, labels, holdout, sample=len(labels), leaf=20)
        return
    holdout = float(sys.argv[3]) if len(sys.argv) > 3 else 0.25
    sample = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
    frame = pd.read_csv(path)
    features = frame.drop(columns=["event_id", "time_ms", "label"]).to_numpy(float)
    labels = frame["label"].to_numpy(float)
    if target == "order_value":
        compare_regression(features, labels, holdout)
    else:
        compare(features, labels, holdout, sample)


def split(features, labels, holdout):
    """The latest `holdout` share held out: the rows are in time order."""
    held = int(round(len(labels) * holdout))
    cut = len(labels) - held
    return features[:cut], labels[:cut], features[cut:], labels[cut:]


def prepared(model):
    return make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), model)


def run(name, model, x, y, score):
    started = time.perf_counter()
    model.fit(x, y)
    seconds = time.perf_counter() - started
    print(f"| {name} | {score(model):.4f} | {seconds:.2f} s | {len(y)} |")


def compare_regression(features, labels, holdout):
    x_train, y_train, x_test, y_test = split(features, labels, holdout)
    print("| scikit-learn family | R^2 | fit time | rows |\n|---|---|---|---|")
    run("Ridge(alpha=1)", prepared(Ridge(alpha=1.0)), x_train, y_train,
        lambda m: r2_score(y_test, m.predict(x_test)))


def compare(features, labels, holdout, sample, leaf=1):
    x_train, y_train, x_test, y_test = split(features, labels, holdout)
    width = features.shape[1]
    auc = lambda m: roc_auc_score(y_test, m.decision_function(x_test))
    auc_proba = lambda m: roc_auc_score(y_test, m.predict_proba(x_test)[:, 1])
    print("| scikit-learn family | ROC-AUC | fit time | rows |\n|---|---|---|---|")
    run("LogisticRegression(C=1, lbfgs)",
        prepared(LogisticRegression(C=1.0, max_iter=1000)), x_train, y_train, auc)
    run(f"DecisionTreeClassifier(max_depth=10, min_samples_leaf={leaf})",
        prepared(DecisionTreeClassifier(max_depth=10, min_samples_leaf=leaf, random_state=0)),
        x_train, y_train, auc_proba)
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
