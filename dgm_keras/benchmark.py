"""The paper's comparison table: every method on one scenario, one Markdown table.

    python -m dgm_keras.benchmark --dataset=mnist --methods=all                  # 10 tasks x 1 class
    python -m dgm_keras.benchmark --dataset=mnist --classes_per_task=2 --methods=all --epochs_per_task=1
    python -m dgm_keras.benchmark --methods=finetune,ewc,ewc_m --out=/tmp/table.md

Each entry runs as its own ``python -m dgm_keras.train --settings=<entry>`` process (the
entry's settings file ``flags/<dataset>_<entry>.cfg``, which must exist, then the scenario
and budget flags given here, which win), so a crash in one method cannot take the others down and each process's
wall time and peak memory (``os.wait4``'s ru_maxrss) are its own. Figures come from each
run's results.json; the table is written atomically to ``--out`` and printed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time

from absl import flags

from dgm_keras import config, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str  # --methods name; its settings are flags/<dataset>_<key>.cfg (train's --settings)
    label: str  # as in the paper's table
    method: str  # --method
    # The paper's MNIST 10x1 figures (A5, A10) as METHOD.md gives them; None where it gives none.
    paper_mnist: tuple[float | None, float | None] = (None, None)
    paper_note: str = ""


ENTRIES = (
    Entry("joint", "JT (upper bound)", "joint", paper_mnist=(None, 99.24), paper_note="recalled"),
    Entry("finetune", "Fine-tuning (lower bound)", "finetune"),
    Entry("ewc", "EWC", "ewc"),
    Entry("ewc_m", "EWC-M", "ewc"),
    Entry("si", "SI", "si"),
    Entry("si_m", "SI-M", "si"),
    Entry("rwalk", "RWalk", "rwalk"),
    Entry("rwalk_m", "RWalk-M", "rwalk"),
    Entry("icarl", "iCaRL", "icarl"),
    Entry("dgr", "DGR", "dgr", paper_mnist=(None, 85.40), paper_note="recalled"),
    Entry("mergan", "MeRGAN (JTR)", "mergan", paper_mnist=(None, 97.00), paper_note="recalled"),
    Entry("mergan_ra", "MeRGAN (RA)", "mergan"),
    Entry("dgmw", "DGMw (ours)", "dgmw", paper_mnist=(98.75, 97.92), paper_note="A10 as indexed; A5 recalled"),
    Entry("dgma", "DGMa (ours)", "dgma", paper_mnist=(99.17, None), paper_note="recalled"),
)
ENTRY_KEYS = tuple(e.key for e in ENTRIES)
assert {e.method for e in ENTRIES} == set(config.METHOD_NAMES)
assert set(ENTRY_KEYS) == set(settings.KEYS)
assert all(settings.method_of(e.key) == e.method for e in ENTRIES)

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("dataset", "mnist", f"One of: {', '.join(config.DATASETS)}.")
    flags.DEFINE_integer("classes_per_task", 1, "1: the paper's 10x1 split; 2: the 5x2 split.")
    flags.DEFINE_string("methods", "all", f"'all' or a comma list of: {', '.join(ENTRY_KEYS)}.")
    flags.DEFINE_integer("epochs_per_task", 0, "If > 0, overrides every flagfile's epochs per task (the table's budget).")
    flags.DEFINE_integer("steps_per_task", 0, "If > 0, iterations per task instead of epochs.")
    flags.DEFINE_integer("seed", 0, "Seed of every run.")
    flags.DEFINE_string("workdir", "runs/benchmark", "Runs land in <workdir>/<dataset>_<split>/<entry>/.")
    flags.DEFINE_string("out", None, "Markdown table path; default <workdir>/<dataset>_<split>.md.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir, passed to every run.")
    flags.DEFINE_multi_string("train_flag", [], "A flag passed to every run after the harness's own, e.g. "
                              "--train_flag=--gp_weight=10 (repeat for more); the table's title names them.")
    flags.DEFINE_bool("rerun", False, "Rerun entries that already finished under --workdir (default: reuse them).")


class BenchmarkError(ValueError):
    pass


def select_entries(spec: str) -> list[Entry]:
    """The entries to run, in the order given (``all``: table order)."""
    if spec == "all":
        return list(ENTRIES)
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ENTRY_KEYS]
    if unknown or not keys:
        raise BenchmarkError(f"--methods={spec!r} is not allowed; allowed: all, or a comma list of {', '.join(ENTRY_KEYS)}")
    by_key = {e.key: e for e in ENTRIES}
    return [by_key[k] for k in dict.fromkeys(keys)]


def table_order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: ENTRY_KEYS.index(row["key"]))


def train_command(entry: Entry, dataset: str, classes_per_task: int, run_dir: str, opts: dict) -> list[str]:
    """The entry's run: train applies the entry's settings file of ``dataset`` (as for a user's
    command), then the scenario and budget flags given here, then ``--train_flag`` ones."""
    cmd = [sys.executable, "-m", "dgm_keras.train", f"--settings={entry.key}"]
    cmd += [f"--dataset={dataset}", f"--classes_per_task={classes_per_task}", f"--seed={opts['seed']}",
            f"--workdir={run_dir}", f"--export_dir={os.path.join(run_dir, 'savedmodels')}", f"--run_name={entry.key}"]
    if opts.get("epochs_per_task"):
        cmd.append(f"--epochs_per_task={opts['epochs_per_task']}")
    if opts.get("steps_per_task"):
        cmd.append(f"--steps_per_task={opts['steps_per_task']}")
    if opts.get("data_dir"):
        cmd.append(f"--data_dir={opts['data_dir']}")
    return cmd + list(opts.get("train_flags", ()))


def check_settings(entries: list[Entry], dataset: str) -> None:
    """Every entry has its settings file for ``dataset`` before anything runs."""
    missing = [e.key for e in entries if not os.path.exists(settings.path(dataset, e.key))]
    if missing:
        raise BenchmarkError(f"no settings for --dataset={dataset} with {', '.join(missing)}: "
                             f"{', '.join(settings.relative(settings.path(dataset, k)) for k in missing)} missing "
                             f"(see flags/README.md); or pick --methods among those that have them")


# Flags the harness sets itself: one scenario, one place for each run.
HARNESS_FLAGS = ("method", "settings", "flagfile", "dataset", "classes_per_task", "seed", "workdir", "export_dir", "run_name",
                 "epochs_per_task", "steps_per_task", "data_dir")


def check_train_flags(train_flags: list[str]) -> list[str]:
    """``--name=value`` flags for every run, refusing those the harness sets (pass those to it)."""
    for flag in train_flags:
        name = flag[2:].split("=", 1)[0] if flag.startswith("--") else ""
        if not name:
            raise BenchmarkError(f"--train_flag={flag!r} is not allowed; allowed: a train flag written --name=value")
        if name in HARNESS_FLAGS:
            raise BenchmarkError(f"--train_flag={flag!r} is not allowed; allowed: any train flag but "
                                 f"{', '.join(HARNESS_FLAGS)} (the harness sets those: pass --{name} to it)")
    return list(train_flags)


def same_run(recorded: list[str], command: list[str]) -> bool:
    """Whether a finished entry's command is this one, up to where the data is read from
    (the same TFDS data under another directory gives the same run)."""
    def result_flags(cmd):
        return [arg for arg in cmd if not arg.startswith("--data_dir=")]
    return result_flags(recorded) == result_flags(command)


def run_set_name(dataset: str, split: str, train_flags: list[str]) -> str:
    """Runs with other train flags live in their own folder, so they never replace the plain runs."""
    suffix = "".join("+" + re.sub(r"[^A-Za-z0-9_.=-]", "_", flag.lstrip("-")) for flag in train_flags)
    return f"{dataset}_{split}{suffix}"


def recorded_row(run_dir: str) -> dict | None:
    try:
        with open(os.path.join(run_dir, "benchmark_row.json")) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def finished_row(run_dir: str, cmd: list[str], row: dict | None = None) -> dict | None:
    """The entry's row (``row``, or the one recorded) with its results, if it finished with exactly this command."""
    row = row or recorded_row(run_dir)
    if not row or row.get("exit") != 0 or not same_run(row.get("command", []), cmd[1:]):
        return None
    with open(os.path.join(run_dir, "results.json")) as f:
        row["results"] = json.load(f)
    return row


def run_entry(entry: Entry, cmd: list[str], run_dir: str, rerun: bool = False, log=print) -> dict:
    """One method in its own process; its wall time, CPU time and peak resident memory.
    A finished entry (its row saved beside its results) is reused unless ``rerun``; one that did
    not finish (killed, the machine restarted, or failed) with the same command resumes from its
    checkpoints, as train does, so a long harness can be run in parts (its times are then the
    last process's). Another command, and every entry under ``rerun``, starts clean."""
    previous = None if rerun else recorded_row(run_dir)
    done = finished_row(run_dir, cmd, previous) if previous else None
    if done:
        log(f"[{entry.key}] reused {run_dir}")
        return done
    resuming = bool(previous and same_run(previous.get("command", []), cmd[1:]))  # same command, not finished
    if os.path.isdir(run_dir) and not resuming:
        shutil.rmtree(run_dir)  # a rerun starts clean, not from the old run's checkpoints
    os.makedirs(run_dir, exist_ok=True)
    log(f"[{entry.key}] {'resuming: ' if resuming else ''}{' '.join(cmd[1:])}")
    # Recorded before the process starts: a harness killed now finds this entry resumable.
    write_atomic(os.path.join(run_dir, "benchmark_row.json"),
                 json.dumps({"key": entry.key, "command": cmd[1:], "exit": None}, indent=1))
    start = time.time()
    with open(os.path.join(run_dir, "train.log"), "a" if resuming else "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    row = {"key": entry.key, "command": cmd[1:], "wall_seconds": round(time.time() - start, 1),
           "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),  # robust to other load on the machine
           "peak_memory_mb": round(usage.ru_maxrss / 1024.0, 1), "exit": os.waitstatus_to_exitcode(status)}
    if resuming:  # wall and CPU time above are the last process's; the results' task_seconds cover the whole run
        row["resumed"] = True
    results_path = os.path.join(run_dir, "results.json")
    if row["exit"] == 0 and os.path.exists(results_path):
        with open(results_path) as f:
            row["results"] = json.load(f)
    else:
        with open(os.path.join(run_dir, "train.log")) as f:
            lines = [line.strip() for line in f if line.strip()]
        row["error"] = lines[-1] if lines else "no output"
    write_atomic(os.path.join(run_dir, "benchmark_row.json"), json.dumps({k: v for k, v in row.items() if k != "results"}, indent=1))
    log(f"[{entry.key}] exit {row['exit']} in {row['wall_seconds']} s")
    return row


def earlier_rows(entries: list[Entry], dataset: str, classes_per_task: int, root: str, opts: dict) -> list[dict]:
    """Entries not asked for this time that finished earlier with the command they would run now:
    they stay in the table, so the harness may be run a few methods at a time."""
    rows = []
    for entry in ENTRIES:
        if entry not in entries and os.path.exists(settings.path(dataset, entry.key)):
            run_dir = os.path.join(root, entry.key)
            row = finished_row(run_dir, train_command(entry, dataset, classes_per_task, run_dir, opts))
            if row:
                rows.append(row)
    return rows


def run_and_tabulate(entries: list[Entry], dataset: str, classes_per_task: int, root: str, opts: dict, out: str,
                     budget: str, rerun: bool = False, run=run_entry) -> tuple[list[dict], str]:
    """Runs ``entries`` one after the other and writes the table to ``out`` after each, so a long
    harness killed half-way keeps its rows. The entries not asked for are read again from their
    run folders every time: one that another harness process (another method, at the same time)
    finished meanwhile keeps its row (read once at the start, it was dropped from the table)."""
    done, rows, table = [], [], ""
    for entry in entries:
        run_dir = os.path.join(root, entry.key)
        done.append(run(entry, train_command(entry, dataset, classes_per_task, run_dir, opts), run_dir, rerun=rerun))
        rows = table_order(earlier_rows(entries, dataset, classes_per_task, root, opts) + done)
        table = format_table(rows, dataset, classes_per_task, budget)
        write_atomic(out, table)
    return rows, table


def accuracy_at(results: dict, num_seen: int, selected: bool = False) -> float | None:
    """A_n: accuracy over the first ``num_seen`` classes, after the task that completes them."""
    seen = results["scenario"]["classes_per_task"]
    task = num_seen // seen - 1
    values = results["A_t_selected" if selected else "A_t"]
    if num_seen % seen or task >= len(values):
        return None
    return 100.0 * values[task]


def mid_point(num_classes: int, classes_per_task: int) -> int:
    """The A_t reported beside the last one: A5 of MNIST 10x1 (the first task end at or past half)."""
    half = -(-num_classes // 2)
    return -(-half // classes_per_task) * classes_per_task


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict], dataset: str, classes_per_task: int, budget: str) -> str:
    num_classes = len(config.DATASETS[dataset].classes)
    mid, last = mid_point(num_classes, classes_per_task), num_classes
    paper_applies = dataset == "mnist" and classes_per_task == 1
    header = (f"| method | A{mid} strict | A{mid} selected | A{last} strict | A{last} selected | forgetting | wall / CPU time | "
              f"peak memory | classifier params | generator params | paper A{mid} / A{last} |")
    lines = [f"{dataset}, {num_classes // classes_per_task} tasks x {classes_per_task} class(es); {budget}", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    by_key = {e.key: e for e in ENTRIES}
    for row in rows:
        entry = by_key[row["key"]]
        paper = "—"
        if paper_applies and any(v is not None for v in entry.paper_mnist):
            paper = f"{_fmt(entry.paper_mnist[0])} / {_fmt(entry.paper_mnist[1])} ({entry.paper_note})"
        if "results" not in row:
            lines.append(f"| {entry.label} | failed (exit {row['exit']}): {row['error'][:80]} |" + " |" * 9 + f" {paper} |")
            continue
        res = row["results"]
        params = res.get("parameters", {})
        cells = [entry.label, _fmt(accuracy_at(res, mid)), _fmt(accuracy_at(res, mid, True)),
                 _fmt(accuracy_at(res, last)), _fmt(accuracy_at(res, last, True)),
                 _fmt(100.0 * res["forgetting"]), f"{row['wall_seconds'] / 60:.1f} / {row['cpu_seconds'] / 60:.1f} min"
                 + (" (resumed: the last part only)" if row.get("resumed") else ""),
                 f"{row['peak_memory_mb']:.0f} MB", f"{params.get('classifier', 0):,}",
                 f"{params.get('generator', 0):,}" if params.get("generator") else "—", paper]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv):
    if len(argv) > 1:
        sys.exit(f"benchmark: unexpected arguments {argv[1:]}; pass everything as --flags")
    try:
        if FLAGS.dataset not in config.DATASETS:
            raise BenchmarkError(f"--dataset={FLAGS.dataset!r} is not allowed; allowed: {', '.join(config.DATASETS)}")
        divisors = config.task_split_divisors(FLAGS.dataset)
        if FLAGS.classes_per_task not in divisors:
            raise BenchmarkError(f"--classes_per_task={FLAGS.classes_per_task} is not allowed; allowed: "
                                 + ", ".join(map(str, divisors)))
        for name in ("epochs_per_task", "steps_per_task"):
            if FLAGS[name].value < 0:
                raise BenchmarkError(f"--{name}={FLAGS[name].value} is not allowed; allowed: 0 or a positive integer")
        entries = select_entries(FLAGS.methods)
        check_settings(entries, FLAGS.dataset)
        train_flags = check_train_flags(FLAGS.train_flag)
    except BenchmarkError as err:
        sys.exit(f"benchmark: {err}")
    split = f"{len(config.DATASETS[FLAGS.dataset].classes) // FLAGS.classes_per_task}x{FLAGS.classes_per_task}"
    name = run_set_name(FLAGS.dataset, split, train_flags)
    root = os.path.join(FLAGS.workdir, name)
    out = FLAGS.out or os.path.join(FLAGS.workdir, f"{name}.md")
    opts = dict(seed=FLAGS.seed, epochs_per_task=FLAGS.epochs_per_task, steps_per_task=FLAGS.steps_per_task,
                data_dir=FLAGS.data_dir, train_flags=train_flags)
    budget = (f"{FLAGS.steps_per_task} steps a task" if FLAGS.steps_per_task else
              f"{FLAGS.epochs_per_task} epoch(s) a task" if FLAGS.epochs_per_task else "each settings file's budget")
    budget += "".join(f"; {flag}" for flag in train_flags)
    rows, table = run_and_tabulate(entries, FLAGS.dataset, FLAGS.classes_per_task, root, opts, out, budget,
                                   rerun=FLAGS.rerun)
    write_atomic(os.path.splitext(out)[0] + ".json", json.dumps(
        [{k: v for k, v in r.items() if k != "results"} | {"results_path": os.path.join(root, r["key"], "results.json")}
         for r in rows], indent=1))
    print(table)
    print(f"table: {out}")


def run() -> None:
    """The command (``python -m dgm_keras.benchmark``, or ``dgm-benchmark`` once installed)."""
    from dgm_keras import cli  # noqa: PLC0415

    define_flags()
    cli.run(main, "benchmark", __doc__, [FLAGS.find_module_defining_flag("dataset")])


if __name__ == "__main__":
    run()
