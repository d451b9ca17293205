"""Runs variants of one experiment and compares them on the validation split.

    python benchmarks/sweep.py --name=mnist10x1_e1 --base="--epochs_per_task=1" \
        --variant=paper= --variant=separate="--classifier=separate" --seeds=0 --parallel=2

Each variant is ``name=flags`` (flags as typed on ``python -m dgm_keras.train``; empty for
the base alone). Every (variant, seed) runs once into ``<root>/<name>/<variant>/seed<s>``; a
run already complete is not rerun, so a sweep can be run in parts, and one interrupted
resumes from its checkpoints. The table ranks variants by the last task's validation
accuracy (mean ± std over seeds): settings are chosen here, on validation. Test figures are
printed only with ``--test``, for settings already chosen.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import statistics
import subprocess
import sys
import time


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise SystemExit(f"sweep: --variant={text!r}: expected name=flags (a name without '/')")
    return name, shlex.split(flags)


def run_dir(root: str, sweep: str, variant: str, seed: int) -> str:
    return os.path.join(root, sweep, variant, f"seed{seed}")


def results_of(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "results.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def run_one(base: list[str], flags: list[str], workdir: str, seed: int, export_root: str) -> tuple[str, int, float]:
    """Trains one (variant, seed) unless it is complete; returns (workdir, return code, seconds)."""
    done = results_of(workdir)
    if done and done.get("complete"):
        return workdir, 0, 0.0
    os.makedirs(workdir, exist_ok=True)
    name = workdir.replace(os.sep, "_")
    cmd = [sys.executable, "-m", "dgm_keras.train", *base, *flags, f"--seed={seed}", f"--workdir={workdir}",
           f"--export_dir={export_root}", f"--run_name={name}"]
    start = time.time()
    with open(os.path.join(workdir, "log.txt"), "a") as log:
        log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    return workdir, rc, time.time() - start


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (1 seed)"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table(root: str, sweep: str, variants: list[tuple[str, list[str]]], seeds: list[int], with_test: bool) -> str:
    rows = []
    for name, flags in variants:
        found = [r for r in (results_of(run_dir(root, sweep, name, s)) for s in seeds) if r and r.get("complete")]
        last = [r["A_t_validation"][-1] for r in found]
        mid = [r["A_t_validation"][len(r["A_t_validation"]) // 2 - 1] for r in found if len(r["A_t_validation"]) > 1]
        size = [(r.get("method_report", {}).get("generator_size_after_task") or [0])[-1] for r in found]
        minutes = [sum(r["task_seconds"]) / 60 for r in found]
        cells = [name, " ".join(flags) or "(base)", f"{len(found)}/{len(seeds)}", mean_std(mid), mean_std(last),
                 f"{statistics.mean(size):,.0f}" if size and size[0] else "-",
                 f"{statistics.mean(minutes):.1f}" if minutes else "-"]
        if with_test:
            cells.append(mean_std([r["A_t"][-1] for r in found]))
        rows.append((statistics.mean(last) if last else -1.0, cells))
    header = ["variant", "flags", "seeds done", "validation A(mid)", "validation A(last)", "generator weights",
              "training min"] + (["test A(last), strict"] if with_test else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for _, c in sorted(rows, key=lambda r: -r[0])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the sweep's folder under --root")
    parser.add_argument("--base", default="", help="flags every variant shares")
    parser.add_argument("--variant", action="append", required=True, help="name=flags; repeat")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (each uses the machine's cores)")
    parser.add_argument("--root", default="runs/sweep")
    parser.add_argument("--report", action="store_true", help="only print the table of what has finished")
    parser.add_argument("--test", action="store_true", help="also print test A (for settings already chosen)")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"sweep: --seeds={args.seeds!r}: expected comma-separated integers") from None
    base = shlex.split(args.base)
    if not args.report:
        exports = os.path.join(args.root, args.name, "exports")
        jobs = [(base, flags, run_dir(args.root, args.name, name, seed), seed, exports)
                for seed in seeds for name, flags in variants]
        with concurrent.futures.ThreadPoolExecutor(max(1, args.parallel)) as pool:
            for workdir, rc, seconds in pool.map(lambda job: run_one(*job), jobs):
                status = "ok" if rc == 0 else f"FAILED (rc {rc}; see {workdir}/log.txt)"
                print(f"{workdir}: {status}, {seconds / 60:.1f} min", flush=True)
    print(table(args.root, args.name, variants, seeds, args.test))


if __name__ == "__main__":
    main()
