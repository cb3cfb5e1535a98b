"""The viewer at scale: the episodes page and an episode page over 100,000 episodes.

    python bench/viewer.py                     # builds the store once, then measures
    python bench/viewer.py --db my.db --repeat 9

The store is the synthetic one of bench/review.py (bench/synthetic_store.py), kept in
~/.cache/oversight/bench-viewer-100000.db. The app is the real one (`create_app` on the store
opened read-only, every middleware), driven in process by Starlette's TestClient: each time is
a whole request, query to rendered HTML. First the start-up work is timed (the facets the
app computes in the background when it starts); then each page once (its first view), then
the median of --repeat views. Printed as ratios to the floors, achieved ÷ floor (≤ 1 meets it):

  episodes page (first, filtered, deep)    ≤ 300 ms
  episode page                             ≤ 200 ms

Text search (a LIKE over every message of the run) is printed too, with no floor. Then the
first view of the run, detection and comparison pages, each on a new app (started: facets
and spend computed; the report, detection records and comparison not yet), and its second. Not a
test: nothing here asserts; the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from review import CACHE, build, usable  # noqa: E402 - the same synthetic store, built once

FLOORS = {"episodes": 0.300, "episode": 0.200}


def pages(run_id: str, total: int) -> list[tuple[str, str, str | None]]:
    """(label, URL, floor) of each measured page."""
    deep = max(1, total // 50)
    return [
        ("episodes: first page", f"/episodes?run={run_id}", "episodes"),
        ("episodes: all runs, first page", "/episodes", "episodes"),
        ("episodes: filtered (variant, wrong, flagged)",
         f"/episodes?run={run_id}&variant=debate%5Brounds%3D1%5D&result=wrong&flagged=yes",
         "episodes"),
        ("episodes: filtered (role's model, disposition, suspicion)",
         f"/episodes?run={run_id}&model=judge:gpt-4o-mini&disposition=untrusted:schemer"
         "&susp_min=7", "episodes"),
        ("episodes: filtered (dataset, intent, outcome)",
         f"/episodes?run={run_id}&dataset=boolq&intent=attack&outcome=bad", "episodes"),
        ("episodes: filtered (final answer wrong)", f"/episodes?run={run_id}&result=wrong",
         "episodes"),
        (f"episodes: deep page ({deep:,})", f"/episodes?run={run_id}&page={deep}", "episodes"),
        ("episodes: deep page, sorted by cost",
         f"/episodes?run={run_id}&sort=cost&dir=desc&page={deep // 2}", "episodes"),
        ("episodes: text search", f"/episodes?run={run_id}&q=ignores%20while", None),
        ("episode page (debate)", "/episode/{debate}", "episode"),
        ("episode page (middle of the store)", f"/episode/{total // 2}", "episode"),
    ]


def figure_pages(run_id: str) -> list[tuple[str, str]]:
    """(label, URL) of the pages whose first view computes the analysis."""
    a, b = "debate%5Brounds%3D1%5D", "debate%5Brounds%3D2%5D"
    return [("run page", f"/run?id={run_id}"), ("detection page", f"/detection?run={run_id}"),
            ("compare page (two variants)", f"/compare?a={run_id}&av={a}&b={run_id}&bv={b}")]


def first_views(store, run_id: str) -> None:
    """Each figure page's first view on a new app (its caches empty), then its second."""
    from starlette.testclient import TestClient

    from oversight.viewer import create_app
    print(f"\n{'page (new app each)':58} {'first ms':>9} {'second ms':>10} {'load':>8}")
    for label, url in figure_pages(run_id):
        app = create_app(store)
        app.state.reader.warm()  # what start-up does (facets, spend); not the figures
        client = TestClient(app)  # no lifespan: nothing else computed behind it
        first = timed(client, url)
        second = timed(client, url)
        print(f"{label:58} {first * 1000:9.0f} {second * 1000:10.0f} {os.getloadavg()[0]:8.2f}")


def timed(client, url: str) -> float:
    t0 = time.perf_counter()
    r = client.get(url)
    took = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"{url}: HTTP {r.status_code}\n{r.text[:500]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="a store to measure (default: the synthetic one)")
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rebuild", action="store_true", help="build the synthetic store anew")
    parser.add_argument("--figures-only", action="store_true",
                        help="only the first views of the run, detection and compare pages")
    args = parser.parse_args()
    db = args.db or CACHE / f"bench-viewer-{args.episodes}.db"
    run_id = None if args.rebuild and not args.db else usable(db, args.episodes)
    if run_id is None and args.db:
        import sqlite3
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        run_id = con.execute("SELECT run_id FROM episodes GROUP BY run_id ORDER BY count(*) DESC "
                             "LIMIT 1").fetchone()[0]
        con.close()
    elif run_id is None:
        run_id = build(db, args.episodes)

    from starlette.testclient import TestClient

    from oversight.store import Store
    from oversight.viewer import create_app
    load = os.getloadavg()
    store = Store(db, readonly=True)
    app = create_app(store)
    reader = app.state.reader
    t0 = time.perf_counter()
    reader.warm()  # what the app's start-up starts in the background
    warm = time.perf_counter() - t0
    import sqlite3
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    total = con.execute("SELECT count(*) FROM episodes WHERE run_id = ?", (run_id,)).fetchone()[0]
    debate = con.execute("SELECT min(id) FROM episodes WHERE run_id = ? AND protocol = 'debate' "
                         "AND status = 'done'", (run_id,)).fetchone()[0]
    con.close()
    print(f"store {db} (run {run_id}, {total:,} episodes); load average {load[0]:.2f}")
    print(f"start-up (facets and spend, in the background): {warm * 1000:.0f} ms\n")
    print(f"{'page':58} {'first ms':>9} {'median ms':>10} {'÷ floor':>8}")
    if args.figures_only:
        first_views(store, run_id)
        return store.close()
    with TestClient(app) as client:
        timed(client, "/")  # templates compiled once, as any first visit does
        for label, url, floor in pages(run_id, total):
            url = url.format(debate=debate)
            first = timed(client, url)
            median = statistics.median(timed(client, url) for _ in range(args.repeat))
            ratio = f"{median / FLOORS[floor]:.2f}" + (" ✓" if median <= FLOORS[floor] else " ✗") \
                if floor else "—"
            print(f"{label:58} {first * 1000:9.0f} {median * 1000:10.0f} {ratio:>8}")
    first_views(store, run_id)
    store.close()
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (figures above: medians "
          f"of {args.repeat}; floors: episodes page {FLOORS['episodes'] * 1000:.0f} ms, "
          f"episode page {FLOORS['episode'] * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
