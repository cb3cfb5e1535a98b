"""Review at scale: `oversight report --json` and `oversight export` over 100,000 episodes.

    python bench/review.py                          # builds the store once, then measures
    python bench/review.py --formats parquet,jsonl,csv --repeat 5
    python bench/review.py --db my.db --run RUN     # any store

The store is a synthetic one (bench/synthetic_store.py: ~2.6 messages, ~1.9 decisions and
~2.8 model calls per episode), built once and kept in ~/.cache/oversight/ (rebuilt when the
schema moves on or --rebuild). Each measurement is a fresh process of the real command line
(`oversight report RUN --json`, `oversight export RUN --format F --out X`), timed by wall
clock, its peak RSS read from the kernel (os.wait4's rusage of that child: the largest of it
and the processes it forked) and the peak of their summed proportional set sizes sampled every 10 ms (`report` forks a
child for its detection section over large runs); the memory floor is held against the larger
of the two. Printed as ratios to the floors, achieved ÷ floor (≤ 1 meets it):

  report --json          ≤ 2 s       peak ≤ 300 MB
  export (each format)   ≤ 5 s       peak ≤ 300 MB

The median of --repeat runs (seconds) and the largest peak. Not a test: timings on a shared
machine are noisy, so nothing here asserts; the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("OVERSIGHT_BENCH_CACHE", Path.home() / ".cache" / "oversight"))
FLOORS = {"report": (2.0, 300.0), "export": (5.0, 300.0)}  # seconds, peak MB

EXPORT_FALLBACK = """
import sys
from oversight.store import Store
from oversight.review.export import export
store = Store(sys.argv[1], readonly=True)
print(export(store, [sys.argv[2]], "episodes", sys.argv[3], sys.argv[4]))
"""


def oversight_exe() -> str:
    return shutil.which("oversight") or str(Path(sys.executable).with_name("oversight"))


def usable(db: Path, episodes: int) -> str | None:
    """The run id of a cached synthetic store that this oversight reads, with `episodes`."""
    if not db.exists():
        return None
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from oversight.store import Store; "
         "Store(sys.argv[1], readonly=True).close()", str(db)], capture_output=True)
    if probe.returncode != 0:  # an older schema (or not a store): build again
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT run_id, count(*) FROM episodes GROUP BY run_id").fetchall()
    finally:
        con.close()
    return rows[0][0] if len(rows) == 1 and rows[0][1] == episodes else None


def build(db: Path, episodes: int) -> str:
    db.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {db} ({episodes:,} episodes) …", flush=True)
    subprocess.run([sys.executable, str(HERE / "synthetic_store.py"), str(db), "--episodes",
                    str(episodes), "--force"], check=True)
    run_id = usable(db, episodes)
    if run_id is None:
        raise SystemExit(f"{db}: the synthetic store did not come out readable")
    return run_id


def tree_pss_mb(pid: int) -> float:
    """The proportional set size of a process and its descendants now (MB; Linux /proc):
    the pages a fork shares counted once in all, not once per process; 0 when gone."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError, StopIteration):
            pass
    return total / 2**10


def sample_tree(pid: int, peak: list[float], stop: threading.Event) -> None:
    """peak[0]: the largest `tree_pss_mb` seen, every 10 ms until `stop` (the report may fork
    a child: its memory adds to the parent's, which the kernel's ru_maxrss does not show)."""
    while not stop.wait(0.01):
        peak[0] = max(peak[0], tree_pss_mb(pid))


def measure(cmd: list[str], env: dict, sample: bool = False) -> dict:
    """One fresh process: wall seconds, its own peak RSS (MB; the largest of it and its
    children), with `sample` the sampled peak of their summed PSS (MB; reading smaps slows
    the process a little, so timed runs do not sample), exit status, output size."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        tree, stop = [0.0], threading.Event()
        sampler = threading.Thread(target=sample_tree, args=(proc.pid, tree, stop)) if sample else None
        if sampler is not None:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        if sampler is not None:
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                           f"{stderr.decode(errors='replace')[-3000:]}")
    # ru_maxrss is in kilobytes on Linux (bytes on macOS)
    peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"wall": wall, "peak": peak, "tree": tree[0], "stdout": stdout,
            "cpu": usage.ru_utime + usage.ru_stime}


def export_command(db: Path, run_id: str, fmt: str, out: Path) -> list[str]:
    """The CLI's `export` when this oversight has it, else export() through `python -c`."""
    exe = oversight_exe()
    probe = subprocess.run([exe, "export", "--help"], capture_output=True, text=True)
    if probe.returncode == 0 and "--format" in probe.stdout and "--out" in probe.stdout:
        return [exe, "export", run_id, "--db", str(db), "--format", fmt, "--out", str(out)]
    return [sys.executable, "-c", EXPORT_FALLBACK, str(db), run_id, fmt, str(out)]


def check_export(path: Path, fmt: str, episodes: int) -> None:
    """The export holds every episode (its writer claimed so; this reads the file)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
    elif fmt == "csv":
        with open(path, encoding="utf-8", newline="") as fh:
            rows = sum(1 for _ in csv.reader(fh)) - 1  # the header
    else:
        with open(path, "rb") as fh:
            rows = sum(1 for _ in fh)
    if rows != episodes:
        raise RuntimeError(f"the {fmt} export holds {rows:,} rows, not {episodes:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--db", type=Path, help="a store to measure (default: the synthetic "
                        "one, built if missing)")
    parser.add_argument("--run", help="the run to measure (default: the store's only run)")
    parser.add_argument("--rebuild", action="store_true", help="build the synthetic store anew")
    parser.add_argument("--formats", default="parquet", help="export formats, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OVERSIGHT_DB"}
    env["PYTHONUNBUFFERED"] = "1"
    if args.db:
        db, run_id = args.db, args.run
        if run_id is None:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            ids = [r[0] for r in con.execute("SELECT DISTINCT run_id FROM episodes")]
            con.close()
            if len(ids) != 1:
                raise SystemExit(f"{db} has {len(ids)} runs: pick one with --run")
            run_id = ids[0]
    else:
        db = CACHE / f"bench-review-{args.episodes}.db"
        run_id = None if args.rebuild else usable(db, args.episodes)
        run_id = run_id or build(db, args.episodes)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    episodes = con.execute("SELECT count(*) FROM episodes WHERE run_id = ?", (run_id,)).fetchone()[0]
    con.close()
    load0 = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"{db} ({db.stat().st_size / 1e6:,.0f} MB), run {run_id}: {episodes:,} episodes; "
          f"median of {args.repeat}", flush=True)

    results: dict[str, list[dict]] = {}
    trees: dict[str, float] = {}  # label -> sampled PSS of the process and its children
    report_cmd = [oversight_exe(), "report", run_id, "--json", "--db", str(db)]
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        plan = [("report --json", "report", report_cmd, None)]
        for fmt in [f for f in args.formats.split(",") if f]:
            out = Path(tmp) / f"episodes.{fmt}"
            plan.append((f"export {fmt}", "export", export_command(db, run_id, fmt, out),
                         (out, fmt)))
        for label, _, cmd, check in plan:
            for i in range(args.repeat + 1):  # the last one samples memory, untimed
                try:
                    r = measure(cmd, env, sample=i == args.repeat)
                except RuntimeError as exc:  # report it, measure the rest
                    last = str(exc).strip().splitlines()
                    print(f"  {label:16s} FAILED: {last[0]} … {last[-1]}", flush=True)
                    break
                if check is None:
                    json.loads(r["stdout"])  # the whole report, strict JSON
                else:
                    check_export(*check, episodes)
                    check[0].unlink()
                r.pop("stdout")
                if i == args.repeat:
                    trees[label] = r["tree"]
                    print(f"  {label:16s} memory run: peak {r['peak']:.0f} MB, sampled PSS with "
                          f"its children {r['tree']:.0f} MB", flush=True)
                    continue
                results.setdefault(label, []).append(r)
                print(f"  {label:16s} run {i + 1}: {r['wall']:.2f} s, CPU {r['cpu']:.2f} s, "
                      f"peak {r['peak']:.0f} MB", flush=True)
        if any("python" in c[2][0] for c in plan[1:]):
            print("  (export through `python -c` and export(): this oversight has no CLI export)")
    load1 = os.getloadavg()
    print()
    print("| measurement | seconds | CPU s | peak MB | peak MB, PSS of all processes (sampled) | "
          "seconds ÷ floor | peak ÷ floor |")
    print("|---|---|---|---|---|---|---|")
    for label, kind, _, _ in plan:
        runs = results.get(label)
        if not runs:
            print(f"| {label} | failed | | | | |")
            continue
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        tree = trees.get(label, 0.0)
        peak = max(tree, *(r["peak"] for r in runs))
        floor_s, floor_mb = FLOORS[kind]
        mark = "✓" if wall <= floor_s and peak <= floor_mb else "✗"
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {max(r['peak'] for r in runs):.0f} | "
              f"{tree:.0f} | {wall / floor_s:.2f} "
              f"(≤ {floor_s:g} s) | {peak / floor_mb:.2f} (≤ {floor_mb:g} MB) {mark} |")
    print(f"\nload average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
