"""A multi-call protocol against its critical path: a 3-round debate through `oversight run`.

    python bench/debate.py                                  # 3 rounds, simultaneous
    python bench/debate.py --sequential --episodes 400 --concurrency 100 --latency 1

The built-in `debate` protocol (debater_a, debater_b, judge) runs on synthetic items with a
hidden context, against the fake OpenAI-compatible server (oversight.testing.fakeserver, in
its own process) answering every call after a fixed latency L. The run is timed by the
server's clock (first request received -> last answer sent).

The critical-path ideal. An episode's calls form a chain of steps in which each step waits for
the one before: with simultaneous speeches a round is ONE step (A and B speak at once), so a
debate of R rounds is R + 1 steps (the judge's decision last) and 2R + 1 calls; with
sequential speeches (A, then B, who sees A's speech) it is 2R + 1 steps. No scheduler can run
an episode faster than steps x L. With C episodes in flight at once (the spec's
`concurrency`; the model's own limit is set to 2C so both speeches of every episode can be in
flight), E episodes take at best

    ideal = (E / C) x steps x L        (E a multiple of C)

which is the issue's "episodes x rounds x latency / concurrency" with the judge's step
counted. Printed: achieved / ideal = ideal / measured span, against the floor (>= 0.9).

Not a test: nothing asserts. The load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Server, raise_open_files  # noqa: E402

FLOOR = 0.9

SPEC = '''
name = "bench-debate"
concurrency = {c}
[data]
datasets = ["items.jsonl"]
[models.m]
provider = "openai"
base_url = "{url}/v1"
model = "bench-model"
max_tokens = 64
concurrency = {mc}
[roles]
"*" = "m"
[[protocols]]
name = "debate"
params = {{ rounds = {rounds}, simultaneous = {simultaneous} }}
treatment = {{ schedule = "none" }}
'''


def write_items(folder: Path, n: int) -> None:
    with open(folder / "items.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"q{i}", "question": f"Is {i} an even number?",
                                 "choices": ["Yes", "No"], "answer_index": i % 2,
                                 "context": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}."})
                     + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=500, help="episodes (two per item: both orders)")
    parser.add_argument("--concurrency", type=int, default=100, help="episodes in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--sequential", action="store_true", help="A then B (default: simultaneous)")
    args = parser.parse_args()
    raise_open_files()
    simultaneous = not args.sequential
    steps = args.rounds + 1 if simultaneous else 2 * args.rounds + 1
    calls_per = 2 * args.rounds + 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERSIGHT_DB")}
    env["OPENAI_API_KEY"] = "bench-not-a-key"
    exe = shutil.which("oversight") or str(Path(sys.executable).with_name("oversight"))
    load0 = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; "
          f"debate, {args.rounds} rounds, {'simultaneous' if simultaneous else 'sequential'}, "
          f"{args.episodes} episodes, {args.concurrency} in flight, latency {args.latency} s",
          flush=True)
    server = Server(args.latency)
    with tempfile.TemporaryDirectory(prefix="bench-debate-") as tmp:
        work = Path(tmp)
        # the two-sided schedule plans two episodes per item (both orders)
        write_items(work, (args.episodes + 1) // 2)
        (work / "spec.toml").write_text(SPEC.format(
            c=args.concurrency, mc=2 * args.concurrency, url=server.url, rounds=args.rounds,
            simultaneous=str(simultaneous).lower()))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        proc = subprocess_run([exe, "run", "spec.toml", "--db", "bench.db", "--quiet"], work, env)
        wall = time.time() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = server.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"oversight run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    episodes = 2 * ((args.episodes + 1) // 2)
    expected = episodes * calls_per
    if stats["answered"] != expected:
        raise RuntimeError(f"the server answered {stats['answered']} calls, expected {expected}")
    span = stats["last_at"] - stats["first_at"]
    ideal = episodes / args.concurrency * steps * args.latency
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ratio = ideal / span
    load1 = os.getloadavg()
    print(f"  {episodes} episodes, {expected} calls ({calls_per} per episode, {steps} steps on "
          f"the critical path) in {span:.2f} s; ideal {ideal:.2f} s = {episodes} / "
          f"{args.concurrency} x {steps} x {args.latency:g} s")
    print(f"  at most {stats['max_in_flight']} calls in flight; process CPU {cpu:.1f} s "
          f"({1000 * cpu / expected:.2f} ms a call, start-up included); wall {wall:.1f} s")
    print(f"\nachieved / critical-path ideal: {ratio:.3f} -> {ratio / FLOOR:.2f} of the floor "
          f"(>= {FLOOR}) {'✓' if ratio >= FLOOR else '✗'}")
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


def subprocess_run(cmd: list[str], cwd: Path, env: dict):
    import subprocess

    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


if __name__ == "__main__":
    main()
