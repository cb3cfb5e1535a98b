"""Peak memory of a batch that does not grow with the run: a mock-provider run of N episodes.

    python bench/memory.py                      # 10,000 and 100,000 episodes
    python bench/memory.py --episodes 10000,100000 --repeat 1

Each size runs `oversight run SPEC --quiet` in a fresh process (judge-alone `direct`
protocol, one call per episode, the `mock` provider with no delay, a fresh SQLite store) and
reads the child's peak RSS from the kernel (`os.wait4`: ru_maxrss of that child alone, in
KiB on Linux). Printed: peak MB per size, the growth per episode between the sizes, and the
peak of the largest size as a ratio to the floor (<= 300 MB at 100,000 episodes).

Not a test: nothing asserts. The load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import judge_alone_spec, write_items  # noqa: E402

FLOOR_MB = 300.0  # at 100,000 episodes


def run_once(n: int, concurrency: int, env: dict) -> dict:
    exe = shutil.which("oversight") or str(Path(sys.executable).with_name("oversight"))
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        write_items(work, n)
        (work / "spec.toml").write_text(
            judge_alone_spec("memory", concurrency, 'provider = "mock"\nmodel = "mock-judge"'))
        t0 = time.perf_counter()
        proc = subprocess.Popen([exe, "run", "spec.toml", "--db", "bench.db", "--quiet"],
                                cwd=work, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err = proc.stderr.read()
        proc.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"oversight run failed ({code}):\n{err[-3000:]}")
        import sqlite3
        con = sqlite3.connect(work / "bench.db")
        done = con.execute("select count(*) from episodes where status = 'done'").fetchone()[0]
        calls = con.execute("select count(*) from model_calls").fetchone()[0]
        con.close()
    if done != n:
        raise RuntimeError(f"{done} of {n} episodes done")
    return {"peak_mb": usage.ru_maxrss / 1024, "wall": wall,
            "cpu": usage.ru_utime + usage.ru_stime, "calls": calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", default="10000,100000",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERSIGHT_DB")}
    load0 = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"mock provider, `direct`, concurrency {args.concurrency}", flush=True)
    peaks = {}
    for n in args.episodes:
        runs = [run_once(n, args.concurrency, env) for _ in range(args.repeat)]
        peak = statistics.median(r["peak_mb"] for r in runs)
        peaks[n] = peak
        r = runs[-1]
        print(f"  {n:>7,} episodes ({r['calls']:,} calls): peak RSS {peak:.0f} MB, "
              f"{r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU "
              f"({1000 * r['cpu'] / n:.2f} ms/episode)", flush=True)
    sizes = sorted(peaks)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        per = (peaks[hi] - peaks[lo]) * 1024 * 1024 / (hi - lo)
        print(f"  growth: {per:.0f} bytes per episode between {lo:,} and {hi:,}")
    top = sizes[-1]
    scaled = peaks[top] if top == 100_000 else None
    load1 = os.getloadavg()
    if scaled is not None:
        print(f"\npeak at 100,000 episodes: {scaled:.0f} MB -> {scaled / FLOOR_MB:.2f} of the floor "
              f"(<= {FLOOR_MB:.0f} MB) {'✓' if scaled <= FLOOR_MB else '✗'}")
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
