"""Two workers against one: calls per second on one PostgreSQL store when the workers are CPU-bound.

    python bench/pg_workers.py                       # openai provider against the fake server
    python bench/pg_workers.py --provider mock       # no HTTP: the mock provider (no delay)
    python bench/pg_workers.py --episodes 6000 --latency 0.01 --concurrency 50

A throw-away PostgreSQL cluster is started the way the tests start theirs (tests/pg.py: initdb
and pg_ctl, a unix socket in a temporary folder, fsync off). The judge-alone `direct` spec
runs as `oversight run SPEC --db postgresql+psycopg://...` twice, each time in a fresh
database: once with one worker, once with two worker processes started together on the same
spec and the same database (leases split the episodes between them). The fake
OpenAI-compatible server (another process) answers after a tiny latency, so that a worker
spends its time on CPU, not waiting: a worker is CPU-bound when its calls per second are far
below concurrency / latency.

calls per second = calls answered / (server's first request -> last answer), for the openai
provider; for the mock provider, calls stored / (first call's created_at -> last one's).
Printed: calls/s of one worker, of two, the ratio (floor: >= 1.8x), each process's CPU, the
fake server's and PostgreSQL's CPU, and the load average. On a 2-core machine two CPU-bound
workers share the cores with the fake server and PostgreSQL, which is the ceiling this
measures against: the ratio cannot exceed (2 cores - their CPU) / (one worker's CPU share).

Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from pg import PostgresServer, ensure_bindir  # noqa: E402  (tests/pg.py)
from throughput import Server, judge_alone_spec, raise_open_files, write_items  # noqa: E402

FLOOR = 1.8


def postgres_cpu(pg: PostgresServer) -> float:
    """CPU seconds of every process of the cluster so far (from /proc, by its data folder)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pid_file = pg.root / "data" / "postmaster.pid"
    try:
        postmaster = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime (live)
        if pid == postmaster:  # + the backends that have exited (the workers' connections)
            total += (int(fields[13]) + int(fields[14])) / tick  # cutime + cstime
    return total


def run_workers(n_workers: int, url: str, work: Path, env: dict) -> list[tuple[int, float]]:
    """Start n workers together; (exit code, CPU seconds) of each."""
    exe = shutil.which("oversight") or str(Path(sys.executable).with_name("oversight"))
    procs = [subprocess.Popen([exe, "run", "spec.toml", "--db", url, "--quiet"], cwd=work,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(n_workers)]
    out = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        err = p.stderr.read()
        p.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"a worker failed ({code}):\n{err[-3000:]}")
        out.append((code, usage.ru_utime + usage.ru_stime))
    return out


def stored(url: str) -> tuple[int, int, float]:
    """(episodes done, calls stored, seconds from the first call row to the last)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        done = conn.execute(text("select count(*) from episodes where status = 'done'")).scalar()
        calls, first, last = conn.execute(text(
            "select count(*), min(created_at), max(created_at) from model_calls")).one()
    engine.dispose()
    from datetime import datetime
    span = (datetime.fromisoformat(str(last)) - datetime.fromisoformat(str(first))).total_seconds()
    return done, calls, span


def measure(n_workers: int, pg: PostgresServer, args, env: dict, tmp: Path) -> dict:
    url = pg.create_database(f"bench_{n_workers}w")
    work = tmp / f"w{n_workers}"
    work.mkdir()
    write_items(work, args.episodes)
    server = Server(args.latency) if args.provider == "openai" else None
    model = (f'provider = "openai"\nbase_url = "{server.url}/v1"\nmodel = "bench-model"'
             if server else 'provider = "mock"\nmodel = "mock-judge"')
    (work / "spec.toml").write_text(judge_alone_spec("bench-pg", args.concurrency, model))
    # The schema is created before the clock starts (a migration is not a call).
    subprocess.run([shutil.which("oversight") or str(Path(sys.executable).with_name("oversight")),
                    "migrate", "--db", url], cwd=work, env=env, check=True, capture_output=True)
    pg0 = postgres_cpu(pg)
    workers = run_workers(n_workers, url, work, env)
    pg_cpu = postgres_cpu(pg) - pg0
    done, calls, span = stored(url)
    if done != args.episodes:
        raise RuntimeError(f"{done} of {args.episodes} episodes done")
    out = {"workers_cpu": [c for _, c in workers], "pg_cpu": pg_cpu, "calls": calls}
    if server is not None:
        stats = server.stop()
        if stats["answered"] != args.episodes:
            raise RuntimeError(f"the server answered {stats['answered']} of {args.episodes} "
                               "calls: an episode ran twice or not at all")
        span = stats["last_at"] - stats["first_at"]
        out["server_cpu"] = stats["cpu_seconds"]
    out["span"] = span
    out["rate"] = calls / span
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.01, help="fake server latency, s")
    parser.add_argument("--provider", choices=("openai", "mock"), default="openai")
    args = parser.parse_args()
    raise_open_files()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERSIGHT_DB")}
    env["OPENAI_API_KEY"] = "bench-not-a-key"
    load0 = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"{args.provider} provider, {args.episodes} episodes, concurrency {args.concurrency} "
          f"per worker, latency {args.latency} s", flush=True)
    pg = PostgresServer(ensure_bindir()).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
            results = {}
            for n in (1, 2):
                r = measure(n, pg, args, env, Path(tmp))
                results[n] = r
                extra = (f", fake server {r['server_cpu']:.1f} s" if "server_cpu" in r else "")
                print(f"  {n} worker{'s' if n > 1 else ''}: {r['calls']} calls in {r['span']:.2f} s "
                      f"-> {r['rate']:.0f} calls/s; CPU per worker "
                      + ", ".join(f"{c:.1f} s" for c in r["workers_cpu"])
                      + f"; PostgreSQL {r['pg_cpu']:.1f} s{extra}", flush=True)
    finally:
        pg.stop()
    ratio = results[2]["rate"] / results[1]["rate"]
    load1 = os.getloadavg()
    print(f"\ntwo workers / one worker: {ratio:.2f}x -> {ratio / FLOOR:.2f} of the floor "
          f"(>= {FLOOR}x) {'✓' if ratio >= FLOOR else '✗'}")
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
