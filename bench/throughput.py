"""Throughput, CPU per call and start-up: oversight against inspect_ai, same server, same run.

    python bench/throughput.py                     # everything (installs inspect_ai once)
    python bench/throughput.py --skip-inspect      # oversight only
    python bench/throughput.py --points 200@1,1000@5x5 --waves 10
    python bench/throughput.py --skip-inspect --only launch --launches 9   # start-up only
    python bench/throughput.py --skip-inspect --provider anthropic        # the Anthropic path

A latency-mock OpenAI-compatible server (oversight.testing.fakeserver, in its own process on
127.0.0.1) answers every chat completion after a fixed latency. Each framework runs the
judge-alone workload (one call per episode / sample) over waves x connections synthetic items
with that many connections; a fresh server per measurement times the run by its own clock
(first request received -> last answer sent). A point `C@L` is C connections at L seconds of
latency, `C@LxW` with W calls per connection (default --waves). Printed as ratios, each
against its floor (issue 11, part 4):

  achieved / ideal throughput   ideal = connections / latency
                                floors: >= 0.95 at 200 connections (1 s), >= 0.85 at 1,000 (5 s)
  CPU ms per call               (CPU of an N-call run - CPU of a 1-call run) / (N - 1), so
                                start-up is not smeared over the calls; includes the store write.
                                Per point, and pooled over the points (sum of CPU over sum of
                                calls): start-up CPU varies by +-0.3 s between launches, which
                                is +-3 ms a call in a 100-call run but +-0.15 in a 2,000-call one.
                                Floor: <= 1.5 ms pooled
  --help seconds                median of 5
  launch -> first request       process spawn to the server's first request (median of 5,
                                or --launches), as a ratio to `python -c "import openai"` on
                                the same machine (median of as many runs, one after each
                                launch, so both see the same machine): floor <= 1.3x

The soft limit on open files is raised to the hard limit (1,000 connections need 1,000
sockets in the client and as many in the server). Not a test: timings on a shared machine are
noisy, so nothing here asserts. The load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSPECT_VERSION = "0.3.285"
INSPECT_VENV = Path(os.environ.get("OVERSIGHT_BENCH_VENV", Path.home() / ".cache" / "oversight" / "bench-inspect-venv"))
# key -> (floor, True if the value must be at least the floor, False if at most)
FLOORS = {"ratio@200": (0.95, True), "ratio@1000": (0.85, True), "cpu_ms": (1.5, False),
          "help_s": (0.3, False), "first_ratio": (1.3, False)}


def parse_points(text: str, waves: int) -> list[tuple[int, float, int]]:
    """"200@1,1000@5x5" -> [(200, 1.0, waves), (1000, 5.0, 5)]; a bare "50" uses --latency."""
    out = []
    for part in text.split(","):
        head, _, w = part.partition("x")
        c, _, lat = head.partition("@")
        out.append((int(c), float(lat) if lat else None, int(w) if w else waves))
    return out


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

INSPECT_TASK = '''
from inspect_ai import Task, task
from inspect_ai.dataset import FieldSpec, json_dataset
from inspect_ai.scorer import match
from inspect_ai.solver import generate


@task
def judge_alone():
    return Task(dataset=json_dataset("items.jsonl", FieldSpec(input="question", target="target", id="id")),
                solver=generate(), scorer=match())
'''

JUDGE_ALONE_SPEC = '''
name = "{name}"
concurrency = {c}
[data]
datasets = ["items.jsonl"]
[models.m]
{model}
max_tokens = 16
concurrency = {c}
[roles]
"*" = "m"
[[protocols]]
name = "direct"
'''


def judge_alone_spec(name: str, concurrency: int, model: str) -> str:
    """The benches' spec: the judge alone (`direct`, one call per episode) over items.jsonl,
    `concurrency` episodes and calls at a time; `model` is the TOML of [models.m]."""
    return JUDGE_ALONE_SPEC.format(name=name, c=concurrency, model=model.strip())


class Server:
    """The fake server in another process; stats come back when it exits."""

    def __init__(self, latency: float):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oversight.testing.fakeserver", "--latency", str(latency)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("FAKESERVER_READY"):
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self) -> dict:
        self.proc.stdin.close()  # the server exits when its stdin closes
        out = self.proc.stdout.read()
        self.proc.wait(30)
        return json.loads(out.split("FAKESERVER_STATS ", 1)[1])


def write_items(folder: Path, n: int) -> None:
    with open(folder / "items.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i}", "question": f"Is {i} an even number?",
                                 "choices": ["Yes", "No"], "answer_index": i % 2,
                                 "target": "A" if i % 2 == 0 else "B"}) + "\n")


def timed_run(fw: "Framework", work: Path, connections: int, env: dict, latency: float) -> dict:
    """One run against a fresh server: wall, CPU of the child, server-side timings."""
    server = Server(latency)
    cmd = fw.command(work, connections, server.url)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = server.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{fw.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "first": stats["first_at"] - t0, "span": stats["last_at"] - stats["first_at"],
            "answered": stats["answered"], "max_in_flight": stats["max_in_flight"]}


class Framework:
    name: str
    sdk = "openai"  # the SDK whose bare import is the floor under launch -> first request

    def command(self, work: Path, connections: int, url: str) -> list[str]: ...
    def help_command(self) -> list[str]: ...


class Oversight(Framework):
    name = "oversight"

    def __init__(self, provider: str = "openai"):
        self.exe = shutil.which("oversight") or str(Path(sys.executable).with_name("oversight"))
        self.provider = self.sdk = provider

    def command(self, work: Path, connections: int, url: str) -> list[str]:
        base_url = f"{url}/v1" if self.provider == "openai" else url  # the SDKs' conventions
        model = (f'provider = "{self.provider}"\nbase_url = "{base_url}"\n'
                 'api_key_env = "BENCH_API_KEY"\nmodel = "bench-model"')
        (work / "spec.toml").write_text(judge_alone_spec("bench", connections, model))
        for db in work.glob("bench.db*"):
            db.unlink()  # a fresh store: every call is a cache miss
        return [self.exe, "run", "spec.toml", "--db", "bench.db", "--quiet"]

    def help_command(self) -> list[str]:
        return [self.exe, "--help"]


class Inspect(Framework):
    name = "inspect_ai"

    def __init__(self):
        python = INSPECT_VENV / "bin" / "python"
        if not python.exists():
            print(f"installing inspect-ai=={INSPECT_VERSION} into {INSPECT_VENV} …", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(INSPECT_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", f"inspect-ai=={INSPECT_VERSION}",
                            "openai>=2"], check=True)
        self.exe = str(INSPECT_VENV / "bin" / "inspect")

    def command(self, work: Path, connections: int, url: str) -> list[str]:
        (work / "task.py").write_text(INSPECT_TASK)
        shutil.rmtree(work / "logs", ignore_errors=True)
        # responses_api=false: the same chat-completions endpoint oversight calls.
        return [self.exe, "eval", "task.py", "--model", "openai/bench-model", "--model-base-url",
                f"{url}/v1", "-M", "responses_api=false", "--max-connections", str(connections),
                "--max-tokens", "16", "--display", "none", "--log-dir", "logs"]

    def help_command(self) -> list[str]:
        return [self.exe, "--help"]


def run_spec(fw: Framework, work: Path, connections: int, n: int, latency: float, env: dict) -> dict:
    write_items(work, n)
    result = timed_run(fw, work, connections, env, latency)
    if result["answered"] != n:
        raise RuntimeError(f"{fw.name}: the server answered {result['answered']} of {n} calls")
    return result


def median_time(cmd: list[str], env: dict, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(fw: Framework, args, env: dict) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-{fw.name}-") as tmp:
        work = Path(tmp)
        if args.only != "launch":
            out["help_s"] = median_time(fw.help_command(), env)
        firsts, one_cpu, out["sdk_import"] = [], [], []
        for _ in range(args.launches):
            r = run_spec(fw, work, 1, 1, args.latency, env)
            firsts.append(r["first"])
            one_cpu.append(r["cpu"])
            # the floor sampled between launches, so a drift in the machine's speed hits both
            out["sdk_import"].append(median_time([sys.executable, "-c", f"import {fw.sdk}"], env, 1))
        out["first_s"] = statistics.median(firsts)
        if args.only == "launch":
            return out
        base_cpu = statistics.median(one_cpu)
        extra_cpu, extra_calls = 0.0, 0
        for c, latency, waves in args.points:
            latency = args.latency if latency is None else latency
            n = waves * c
            r = run_spec(fw, work, c, n, latency, env)
            ideal = c / latency
            out[f"ratio@{c}"] = (n / r["span"]) / ideal
            out[f"inflight@{c}"] = r["max_in_flight"]
            out[f"cpu@{c}"] = 1000 * (r["cpu"] - base_cpu) / (n - 1)
            extra_cpu, extra_calls = extra_cpu + r["cpu"] - base_cpu, extra_calls + n - 1
            print(f"  {fw.name:10s} {c:4d} connections, {latency:g} s: {n} calls in "
                  f"{r['span']:.2f} s (ideal {n / ideal:.2f} s) -> {out[f'ratio@{c}']:.3f} of "
                  f"ideal; at most {r['max_in_flight']} in flight; CPU {out[f'cpu@{c}']:.2f} "
                  f"ms/call", flush=True)
        out["cpu_ms"] = 1000 * extra_cpu / extra_calls
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="200@1,1000@5x5",
                        help="connections@latency[xcalls per connection], comma-separated")
    parser.add_argument("--latency", type=float, default=1.0,
                        help="server latency, seconds, for points without one (and 1-call runs)")
    parser.add_argument("--waves", type=int, default=10, help="calls per connection (default)")
    parser.add_argument("--skip-inspect", action="store_true")
    parser.add_argument("--provider", choices=["openai", "anthropic"], default="openai",
                        help="oversight's provider (the fake server speaks both wire formats; "
                        "inspect_ai always goes through openai)")
    parser.add_argument("--only", choices=["launch"], help="launch -> first request only")
    parser.add_argument("--launches", type=int, default=5,
                        help="1-call runs whose median is launch -> first request (default 5)")
    args = parser.parse_args()
    args.points = parse_points(args.points, args.waves)
    files = raise_open_files()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVERSIGHT_DB",))}
    env.update(OPENAI_API_KEY="bench-not-a-key", BENCH_API_KEY="bench-not-a-key",
               INSPECT_LOG_LEVEL="warning",
               INSPECT_DISPLAY="none")
    load0 = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"open files {files}; oversight through {args.provider}; points "
          + ", ".join(f"{c}@{args.latency if lat is None else lat:g}s x{w}" for c, lat, w in args.points),
          flush=True)
    frameworks = [Oversight(args.provider)] + ([] if args.skip_inspect else [Inspect()])
    results = {fw.name: measure(fw, args, env) for fw in frameworks}
    # The floor under any launch -> first request through the official SDK on this machine:
    # a bare interpreter importing it (and nothing else).
    # (median of the samples taken between the launches of every framework)
    sdk_import = statistics.median(t for r in results.values() for t in r["sdk_import"])
    sdk = frameworks[0].sdk  # (with --provider anthropic, oversight's floor is its own SDK's)
    if sdk != "openai":
        sdk_import = statistics.median(results["oversight"]["sdk_import"])
    for r in results.values():
        r["first_ratio"] = r["first_s"] / sdk_import
    load1 = os.getloadavg()
    cs = [c for c, _, _ in args.points]
    lat = {c: args.latency if at is None else at for c, at, _ in args.points}
    rows = ([f"ratio@{c}" for c in cs] + [f"cpu@{c}" for c in cs]
            + ["cpu_ms", "help_s", "first_s", "first_ratio"])
    if args.only == "launch":
        rows = ["first_s", "first_ratio"]
    labels = {**{f"ratio@{c}": f"achieved / ideal, {c} connections ({lat[c]:g} s)" for c in cs},
              **{f"cpu@{c}": f"CPU ms per call, {c} connections" for c in cs},
              "cpu_ms": "CPU ms per call, pooled", "help_s": "--help seconds",
              "first_s": "launch -> first request, s",
              "first_ratio": f"launch -> first request ÷ `import {sdk}`"}
    names = list(results)
    print()
    print("| metric | " + " | ".join(names) + (" | oversight / inspect_ai" if len(names) > 1 else "")
          + " | floor | oversight ÷ floor |")
    print("|---|" + "---|" * (len(names) + (3 if len(names) > 1 else 2)))
    for key in rows:
        vals = [results[n][key] for n in names]
        cells = [f"{v:.3f}" if "ratio" in key else f"{v:.2f}" for v in vals]
        ratio = f" | {vals[0] / vals[1]:.2f}" if len(vals) > 1 and vals[1] else ""
        floor, at_least = FLOORS.get(key, (None, True))
        if floor is None:
            ok = " | "
        else:
            met = vals[0] >= floor if at_least else vals[0] <= floor
            ok = f"{'≥' if at_least else '≤'} {floor} | {vals[0] / floor:.3f} {'✓' if met else '✗'}"
        print(f"| {labels[key]} | " + " | ".join(cells) + ratio + f" | {ok} |")
    print(f"\n`python -c 'import {sdk}'` alone takes {sdk_import:.2f} s here: oversight's launch -> "
          f"first request is {results['oversight']['first_ratio']:.2f}x that.")
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):  # an editable install then has no .pyc files
        print("PYTHONDONTWRITEBYTECODE is set: oversight's own modules are compiled from source "
              "at every launch (~0.1 s here), the SDK's are not")
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
