"""Association rules: streamscore against mlxtend and pyfim on the same baskets.

Generates a seeded basket set (products in bundles of four, popularity skewed, so there
are rules to find), mines it with `streamscore mine rules --baskets`, with mlxtend's
`fpgrowth` + `association_rules`, and with Christian Borgelt's pyfim (C), and checks
that all find the same frequent itemsets and the same rules, with support, confidence,
lift, leverage and conviction equal to 1e-12 (pyfim's rules have one product in the
consequent: they are compared with ours of one). Prints the three mining times,
measured in the same run.

    python compare_mlxtend.py --streamscore target/release/streamscore [--baskets 60000]

Exits 1 on any difference. Run by scripts/interop.
"""

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time

import fim
import numpy as np
import pandas as pd
from mlxtend.frequent_patterns import association_rules, fpgrowth
from mlxtend.preprocessing import TransactionEncoder

MIN_SUPPORT = 0.0005
MIN_CONFIDENCE = 0.1
MIN_LIFT = 1.0
MAX_LEN = 3
TOLERANCE = 1e-12


def generate(count, products, seed):
    """Baskets of 1-6 products: the first by popularity, each next one of the previous
    product's bundle half the time, else by popularity."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, products + 1) ** 0.8
    weights /= weights.sum()
    sizes = 1 + np.minimum(rng.poisson(1.6, count), 5)
    baskets = []
    for size in sizes:
        basket = [int(rng.choice(products, p=weights))]
        while len(basket) < size:
            if rng.random() < 0.5:
                first = basket[-1] - basket[-1] % 4
                basket.append(first + int(rng.integers(0, 4)))
            else:
                basket.append(int(rng.choice(products, p=weights)))
        baskets.append(sorted({f"p{p}" for p in basket}))
    return baskets


def close(a, b):
    if a is None or b is None or math.isinf(a) or math.isinf(b):
        return (a is None or math.isinf(a)) and (b is None or math.isinf(b))
    return abs(a - b) <= TOLERANCE


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streamscore", required=True)
    parser.add_argument("--baskets", type=int, default=60_000)
    parser.add_argument("--products", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    baskets = generate(args.baskets, args.products, args.seed)
    with tempfile.TemporaryDirectory(prefix="streamscore-mlxtend-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "baskets.txt").write_text("".join(" ".join(b) + "\n" for b in baskets))
        (tmp / "rules.toml").write_text(
            f"min_support = {MIN_SUPPORT}\nmin_confidence = {MIN_CONFIDENCE}\n"
            f"min_lift = {MIN_LIFT}\nmax_len = {MAX_LEN}\n"
        )
        subprocess.run(
            [args.streamscore, "mine", "rules", "--baskets", str(tmp / "baskets.txt"),
             "--config", str(tmp / "rules.toml"), "--models-dir", str(tmp / "models"),
             "--export", str(tmp / "export.json")],
            check=True, stdout=subprocess.DEVNULL,
        )
        ours = json.loads((tmp / "export.json").read_text())

    encoder = TransactionEncoder()
    frame = pd.DataFrame(encoder.fit(baskets).transform(baskets), columns=encoder.columns_)
    started = time.perf_counter()
    itemsets = fpgrowth(frame, min_support=MIN_SUPPORT, use_colnames=True, max_len=MAX_LEN)
    fpgrowth_seconds = time.perf_counter() - started
    started = time.perf_counter()
    rules = association_rules(itemsets, num_itemsets=len(frame), metric="confidence",
                              min_threshold=MIN_CONFIDENCE)
    rules = rules[rules["lift"] >= MIN_LIFT]
    rules_seconds = time.perf_counter() - started

    problems = []
    theirs_sets = {tuple(sorted(s)): v for s, v in zip(itemsets["itemsets"], itemsets["support"])}
    ours_sets = {tuple(i["items"]): i["support"] for i in ours["itemsets"]}
    if theirs_sets.keys() != ours_sets.keys():
        problems.append(
            f"itemsets differ: {len(theirs_sets.keys() - ours_sets.keys())} only in mlxtend, "
            f"{len(ours_sets.keys() - theirs_sets.keys())} only in streamscore")
    for key in theirs_sets.keys() & ours_sets.keys():
        if not close(theirs_sets[key], ours_sets[key]):
            problems.append(f"support of {key}: {theirs_sets[key]} vs {ours_sets[key]}")

    measures = ["support", "confidence", "lift", "leverage", "conviction"]
    theirs_rules = {
        (tuple(sorted(r.antecedents)), tuple(sorted(r.consequents))):
            {m: getattr(r, m) for m in measures}
        for r in rules.itertuples()
    }
    ours_rules = {(tuple(r["antecedent"]), tuple(r["consequent"])): r for r in ours["rules"]}
    if theirs_rules.keys() != ours_rules.keys():
        problems.append(
            f"rules differ: {len(theirs_rules.keys() - ours_rules.keys())} only in mlxtend, "
            f"{len(ours_rules.keys() - theirs_rules.keys())} only in streamscore")
    worst = 0.0
    for key in theirs_rules.keys() & ours_rules.keys():
        for m in measures:
            a, b = theirs_rules[key][m], ours_rules[key][m]
            if not close(a, b):
                problems.append(f"{m} of {key}: {a} (mlxtend) vs {b} (streamscore)")
            elif a is not None and b is not None and not math.isinf(a):
                worst = max(worst, abs(a - b))

    # pyfim: an absolute minimum count, as ours and mlxtend's (ceil of share x baskets);
    # mode "o": a rule's support is that of antecedent and consequent together, as ours.
    min_count = math.ceil(MIN_SUPPORT * len(baskets))
    started = time.perf_counter()
    fim_sets = fim.fpgrowth(baskets, target="s", supp=-min_count, zmax=MAX_LEN, report="a")
    fim_itemset_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fim_rules = fim.fpgrowth(baskets, target="r", supp=-min_count, conf=MIN_CONFIDENCE * 100,
                             zmin=2, zmax=MAX_LEN, report="acl", mode="o")
    fim_rule_seconds = time.perf_counter() - started
    fim_by_set = {tuple(sorted(items)): count / len(baskets) for items, count in fim_sets}
    if fim_by_set.keys() != ours_sets.keys():
        problems.append(
            f"itemsets differ from pyfim: {len(fim_by_set.keys() - ours_sets.keys())} only in "
            f"pyfim, {len(ours_sets.keys() - fim_by_set.keys())} only in streamscore")
    for key in fim_by_set.keys() & ours_sets.keys():
        if not close(fim_by_set[key], ours_sets[key]):
            problems.append(f"support of {key}: {fim_by_set[key]} (pyfim) vs {ours_sets[key]}")
    fim_by_rule = {
        (tuple(sorted(body)), (head,)): (count / len(baskets), confidence, lift)
        for head, body, count, confidence, lift in fim_rules
        if lift >= MIN_LIFT
    }
    ours_single = {key: r for key, r in ours_rules.items() if len(key[1]) == 1}
    if fim_by_rule.keys() != ours_single.keys():
        problems.append(
            f"rules differ from pyfim: {len(fim_by_rule.keys() - ours_single.keys())} only in "
            f"pyfim, {len(ours_single.keys() - fim_by_rule.keys())} only in streamscore")
    for key in fim_by_rule.keys() & ours_single.keys():
        for m, theirs in zip(["support", "confidence", "lift"], fim_by_rule[key]):
            if not close(theirs, ours_single[key][m]):
                problems.append(f"{m} of {key}: {theirs} (pyfim) vs {ours_single[key][m]}")

    ours_seconds = ours["itemset_seconds"] + ours["rule_seconds"]
    theirs_seconds = fpgrowth_seconds + rules_seconds
    fim_seconds = fim_itemset_seconds + fim_rule_seconds
    print(f"{len(baskets)} baskets, {args.products} products: {len(ours_sets)} frequent itemsets, "
          f"{len(ours_rules)} rules ({len(ours_single)} with one product in the consequent, "
          f"as pyfim gives them); largest difference from mlxtend in any measure {worst:.1e}")
    print("| | FP-growth | rules | total |\n|---|---|---|---|")
    print(f"| mlxtend {__import__('mlxtend').__version__} | "
          f"{fpgrowth_seconds:.3f} s | {rules_seconds:.3f} s | {theirs_seconds:.3f} s |")
    print(f"| pyfim {fim.__version__ if hasattr(fim, '__version__') else '6.28'} (C) | "
          f"{fim_itemset_seconds:.4f} s | {fim_rule_seconds:.4f} s (one-product consequents) | "
          f"{fim_seconds:.4f} s |")
    print(f"| streamscore | {ours['itemset_seconds']:.4f} s | {ours['rule_seconds']:.4f} s | "
          f"{ours_seconds:.4f} s |")
    print(f"streamscore FP-growth: {fpgrowth_seconds / max(ours['itemset_seconds'], 1e-9):.1f}x "
          f"mlxtend's speed, {fim_itemset_seconds / max(ours['itemset_seconds'], 1e-9):.2f}x pyfim's")
    if problems:
        for problem in problems[:20]:
            print("DIFFERS:", problem)
        sys.exit(1)
    print("identical itemsets and rules (mlxtend and pyfim)")


if __name__ == "__main__":
    main()
