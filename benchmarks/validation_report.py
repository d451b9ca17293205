"""Compares finished runs on the real validation split, where settings are chosen.

    python benchmarks/validation_report.py runs/benchmark/mnist_10x1/dgmw \
        runs/benchmark/mnist_10x1+d_norm=batch/dgmw runs/benchmark/mnist_10x1+sparsity_weight=0.08/dgmw

Prints, per run, the validation A_t after the middle and the last task (strict: the model as
the task ends) and the best epoch's, ranked by the last strict validation figure. Test figures
are printed only with ``--test``, for the configuration already chosen: a choice made by
reading them would be a choice made on test.
"""

from __future__ import annotations

import argparse
import json
import os


def load(run_dir: str) -> dict:
    path = os.path.join(run_dir, "results.json")
    with open(path) as f:
        results = json.load(f)
    if not results.get("A_t_validation"):
        raise SystemExit(f"validation_report: {path} has no validation figures (a run without a validation "
                         "split, or made before results.json recorded them)")
    return results


def row(run_dir: str, results: dict, with_test: bool) -> str:
    val, best = results["A_t_validation"], results["A_t_validation_selected"]
    mid = len(val) // 2 - 1 if len(val) > 1 else 0
    cells = [run_dir, f"{100 * val[mid]:.2f}", f"{100 * val[-1]:.2f}", f"{100 * best[-1]:.2f}",
             "yes" if results.get("complete") else "no"]
    if with_test:
        cells.append(f"{100 * results['A_t'][-1]:.2f}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders holding results.json")
    parser.add_argument("--test", action="store_true", help="also print the strict test A_t (for the chosen run)")
    args = parser.parse_args()
    loaded = sorted(((r, load(r)) for r in args.runs), key=lambda item: -item[1]["A_t_validation"][-1])
    n = len(loaded[0][1]["A_t_validation"])
    header = ["run", f"validation A(task {max(n // 2, 1)})", f"validation A(task {n})", "best epoch, last task", "complete"]
    header += ["test A (strict)"] if args.test else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for run_dir, results in loaded:
        print(row(run_dir, results, args.test))


if __name__ == "__main__":
    main()
