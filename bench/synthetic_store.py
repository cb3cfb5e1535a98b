"""A synthetic store of any size, fast, for the review benchmarks (report, export, viewer).

    python bench/synthetic_store.py OUT.db --episodes 100000 [--runs 1] [--seed 0] [--force]

The schema comes from oversight's own Store (so every migration is applied and the file is a
store like any other); the rows then go in through sqlite3 `executemany`, one transaction per
10,000 episodes. What a run of the built-in protocols leaves behind, in shape and proportion:

- items from three datasets: `quality` (4 choices; 8 questions share each story, so they share
  a document), `boolq` (2 choices, a passage each), `mmlu` (4 choices, no context);
- per episode one of `direct`, `consultancy` (2 rounds), `debate[rounds=1]`, `debate[rounds=2]`,
  `trusted_monitoring` (roles, assignments, dispositions, intent and outcome filled in the
  way those protocols fill them): ~2.6 messages, ~1.9 decisions (the judge's answer with a
  probability per choice; judge flags with [P(no), P(yes)]; the monitor's suspicion score
  and flag), ~2.8 model calls (about one in ten a failed attempt retried);
- statuses: ~92% done, ~4% failed (an error, no final decision), ~2% interrupted or pending,
  and ~3% of finished episodes with an unparsed final answer (parsed 0, no choice, correct
  NULL).

Prints the run id(s), the counts and the seconds it took.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import operator
import random
import sqlite3
import sys
import time
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring_ascii as encode
from pathlib import Path

BATCH = 10_000  # episodes per transaction
WORDS = ("the evidence suggests that answer is supported by the passage because it states "
         "clearly a detail which the other side ignores while the question asks about "
         "context author claims story character reason however therefore quote verified").split()
MODELS = {
    "judge": {"provider": "openai", "model": "gpt-4o-mini", "base_url": None,
              "api_key_env": "OPENAI_API_KEY", "temperature": 0.0, "max_tokens": 256,
              "concurrency": 32, "endpoint_concurrency": None, "rpm": 5000, "tpm": None,
              "timeout": 120.0, "max_reply_chars": 100000,
              "retry": {"max_attempts": 6, "max_seconds": 300.0, "backoff_initial": 1.0,
                        "backoff_max": 60.0},
              "price": {"input": 0.15, "output": 0.6, "cached_input": 0.075}, "options": {}},
    "strong": {"provider": "anthropic", "model": "claude-sonnet-4-5", "base_url": None,
               "api_key_env": "ANTHROPIC_API_KEY", "temperature": 0.7, "max_tokens": 512,
               "concurrency": 16, "endpoint_concurrency": None, "rpm": 1000, "tpm": 400000,
               "timeout": 120.0, "max_reply_chars": 100000,
               "retry": {"max_attempts": 6, "max_seconds": 300.0, "backoff_initial": 1.0,
                         "backoff_max": 60.0},
               "price": {"input": 3.0, "output": 15.0, "cached_input": 0.3}, "options": {}},
}
# name, weight, roles -> alias, deciding role, params
VARIANTS = [
    ("direct", "direct", 0.15, {"judge": "judge"}, "judge", {}),
    ("consultancy", "consultancy", 0.25, {"consultant": "strong", "judge": "judge"}, "judge",
     {"rounds": 2, "words": 120, "flag": True}),
    ("debate", "debate[rounds=1]", 0.30,
     {"debater_a": "strong", "debater_b": "strong", "judge": "judge"}, "judge",
     {"rounds": 1, "words": 120, "simultaneous": True}),
    ("debate", "debate[rounds=2]", 0.10,
     {"debater_a": "strong", "debater_b": "strong", "judge": "judge"}, "judge",
     {"rounds": 2, "words": 120, "simultaneous": True}),
    ("trusted_monitoring", "trusted_monitoring", 0.20,
     {"untrusted": "strong", "monitor": "judge"}, "untrusted",
     {"attack_rate": 0.3, "threshold": 0.7, "scale": [0, 10]}),
]


def text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choices(WORDS, k=n_words))


class Texts:
    """Pools of prose to pick from: joining fresh words for every row was most of the time."""

    def __init__(self, rng: random.Random, size: int = 4096):
        self.rng = rng
        self.speech = [text(rng, rng.randint(40, 120)) for _ in range(size)]
        self.prompt = [text(rng, rng.randint(50, 80)) for _ in range(size)]
        self.raw = [text(rng, 12) for _ in range(size)]

    def pick(self, pool: list[str]) -> str:
        return pool[int(self.rng.random() * len(pool))]


def softmax(rng: random.Random, n: int, peak: int) -> list[float]:
    logits = [rng.gauss(0, 1) + (2.0 if i == peak else 0.0) for i in range(n)]
    m = max(logits)
    exps = [math.exp(x - m) for x in logits]
    s = sum(exps)
    return [round(e / s, 4) for e in exps]


def columns(db: Path, table: str) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    finally:
        con.close()


class Inserter:
    """executemany of dict rows into one table. Every column the rows have is named (the
    tables' Python-side defaults do not apply to sqlite3 inserts); a column they lack (one
    a later migration added) is left out of the INSERT, so it takes its default or NULL."""

    def __init__(self, con: sqlite3.Connection, table: str, names: list[str]):
        self.con, self.table = con, table
        self.rows: list[tuple] = []
        self._use(names)

    def _use(self, names: list[str]) -> None:
        self.names = names
        self.sql = (f"INSERT INTO {self.table} ({', '.join(names)}) "
                    f"VALUES ({', '.join('?' * len(names))})")
        self.get = operator.itemgetter(*names)

    def add(self, row: dict) -> None:
        try:
            self.rows.append(self.get(row))
        except KeyError:
            self.flush()
            self._use([n for n in self.names if n in row])
            self.rows.append(self.get(row))

    def flush(self) -> None:
        if self.rows:
            self.con.executemany(self.sql, self.rows)
            self.rows = []


def make_items(rng: random.Random, n: int, has_document: bool) -> list[dict]:
    items, story = [], ""
    for i in range(n):
        dataset = ("quality", "boolq", "mmlu")[i % 3]
        n_choices = 2 if dataset == "boolq" else 4
        choices = [f"{text(rng, 4)} ({c})" for c in range(n_choices)]
        target = rng.randrange(n_choices)
        document, context, fields = None, None, {"id": f"{dataset}-{i}"}
        if dataset == "quality":
            doc = i // 24  # 8 quality items per story (every third item is a quality item)
            if i % 24 == 0:
                story = text(rng, 300)
            context, document = story, f"quality-story-{doc}"
            fields["document"] = document
        elif dataset == "boolq":
            context = text(rng, 80)
            document = "context:" + hashlib.sha256(context.encode()).hexdigest()[:16]
        row = {"id": f"{dataset}/{dataset}-{i}", "dataset": dataset,
               "input": text(rng, 15) + "?", "choices": json.dumps(choices),
               "target": json.dumps(target), "kind": "choice", "label": None, "labels": None,
               "bad_labels": None, "context": context, "source": f"synthetic {dataset}",
               "license": "CC0-1.0", "meta": json.dumps({"synthetic": True}),
               "fields": json.dumps(fields)}
        if has_document:
            row["document"] = document
        row["_n"], row["_target"] = n_choices, target
        items.append(row)
    return items


def generate(out: Path, n_episodes: int, n_runs: int = 1,
             seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """Write the synthetic store (a new file); returns its run ids and its rows per table."""
    from oversight.store import Store

    Store(out).close()  # the schema, every migration applied
    rng = random.Random(seed)
    con = sqlite3.connect(out, isolation_level=None)
    # A new file: no journal while it is filled (every page written once, not to the WAL
    # and again at the checkpoint); back to WAL, as every store is, at the end.
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")  # 256 MB: the indexes' random keys stay cached
    con.execute("PRAGMA foreign_keys=OFF")  # rows go in parents first anyway
    tables = {t: columns(out, t) for t in
              ("runs", "items", "episodes", "messages", "decisions", "model_calls")}
    has_document = "document" in tables["items"]
    ins = {t: Inserter(con, t, [c for c in names if c != "id" or t in ("runs", "items",
                                                                      "episodes")])
           for t, names in tables.items()}
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)

    def at(seconds: float) -> str:
        return (t0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")

    code = {"protocols": {v[0]: hashlib.sha256(v[0].encode()).hexdigest() for v in VARIANTS}}
    run_ids = []
    con.execute("BEGIN")
    for r in range(n_runs):
        spec_hash = hashlib.sha256(f"synthetic-{seed}-{r}".encode()).hexdigest()
        run_id = f"synthetic{r or ''}-{spec_hash[:10]}"
        run_ids.append(run_id)
        ins["runs"].add({"id": run_id, "name": f"synthetic{r or ''}", "spec_path": None,
                         "spec_toml": 'name = "synthetic"\n', "spec": json.dumps({"seed": seed}),
                         "spec_hash": spec_hash, "status": "incomplete",
                         "package_version": "0.1.0", "created_at": at(0),
                         "updated_at": at(n_episodes), "replaced_usd": 0.0,
                         "replaced_tokens": 0, "code": json.dumps(code)})
    items = make_items(rng, max(30, n_episodes // 20), has_document)
    for item in items:
        ins["items"].add(item)
    ins["runs"].flush()
    ins["items"].flush()
    con.execute("COMMIT")

    pool = Texts(rng)
    weights = [v[2] for v in VARIANTS]
    models_json = {alias: json.dumps({alias: MODELS[alias]}) for alias in MODELS}
    both_models = json.dumps(MODELS)
    counts = {"episodes": 0, "messages": 0, "decisions": 0, "model_calls": 0}
    con.execute("BEGIN")
    for eid in range(1, n_episodes + 1):
        run_id = run_ids[(eid - 1) * n_runs // n_episodes]
        protocol, variant, _, roles, decides, params = rng.choices(VARIANTS, weights)[0]
        item = items[rng.randrange(len(items))]
        n, target = item["_n"], item["_target"]
        start = eid * 0.5
        dispositions = {role: "honest" for role in roles}
        assignment: dict = {}
        intent: list[str] = []
        outcome = None
        treatment = "none"
        if protocol == "consultancy":
            correct = rng.random() < 0.5
            answer = target if correct else (target + 1) % n
            assignment = {"consultant": {"answer": answer, "correct": correct}}
            treatment = "correct" if correct else "incorrect"
            intent = [] if correct else ["consultant"]
            outcome = not correct
        elif protocol == "debate":
            a_correct = rng.random() < 0.5
            wrong = (target + 1) % n
            assignment = {"debater_a": {"answer": target if a_correct else wrong,
                                        "correct": a_correct},
                          "debater_b": {"answer": wrong if a_correct else target,
                                        "correct": not a_correct}}
            treatment = "a_correct" if a_correct else "b_correct"
            intent = ["debater_b" if a_correct else "debater_a"]
        elif protocol == "trusted_monitoring":
            attack = rng.random() < 0.3
            treatment = "attack" if attack else "honest"
            if attack:
                dispositions["untrusted"] = "schemer"
                intent = ["untrusted"]
            outcome = attack and rng.random() < 0.8
        r = rng.random()
        status = ("done" if r < 0.92 else "failed" if r < 0.96 else
                  "interrupted" if r < 0.98 else "pending")
        # the transcript: (role, kind, round) per turn
        if protocol == "direct":
            turns = [("judge", "decision", None)]
        elif protocol == "consultancy":
            turns = [("consultant", "speech", rd) for rd in range(1, params["rounds"] + 1)]
            turns.append(("judge", "decision", None))
        elif protocol == "debate":
            turns = [(role, "speech", rd) for rd in range(1, params["rounds"] + 1)
                     for role in ("debater_a", "debater_b")] + [("judge", "decision", None)]
        else:
            turns = [("untrusted", "answer", None), ("monitor", "assessment", None)]
        turns_all = turns
        if status == "failed":
            turns = turns[:-1]
        elif status in ("interrupted", "pending"):
            turns = turns[:1] if status == "interrupted" else []
        if status == "failed":  # the turn that never got an answer: every attempt failed
            role = turns_all[len(turns)][0] if len(turns_all) > len(turns) else turns_all[-1][0]
            failures = [(role, attempt) for attempt in range(1, 7)]
        else:
            failures = []
        clock = start
        calls = msgs = 0
        tok_in = tok_out = 0
        cost = 0.0
        for idx, (role, kind, rd) in enumerate(turns):
            alias = roles[role]
            price = MODELS[alias]["price"]
            content = pool.pick(pool.speech)
            if kind == "decision":
                chosen = rng.randrange(n)
                content += f"\nAnswer: {'ABCD'[chosen]}\nConfidence: {rng.randint(50, 99)}%"
            prompt = pool.pick(pool.prompt)
            attempts = 2 if rng.random() < 0.1 else 1  # a rate limit, then a retry
            for attempt in range(1, attempts + 1):
                ok = attempt == attempts
                ti, to = 200 + 40 * idx + rng.randint(0, 80), (len(content) // 4 if ok else None)
                latency = round(rng.uniform(0.4, 6.0), 3)
                clock += latency
                usd = (ti * price["input"] + (to or 0) * price["output"]) / 1e6 if ok else None
                # JSON spelled out: json.dumps of nested dicts was a third of the time
                request = (f'{{"messages": [{{"role": "system", "content": "You are the {role}."}}, '
                           f'{{"role": "user", "content": {encode(prompt)}}}], "max_tokens": '
                           f'{MODELS[alias]["max_tokens"]}, "temperature": '
                           f'{MODELS[alias]["temperature"]}}}')
                response = (f'{{"id": "resp-{eid}-{idx}-{attempt}", "model": '
                            f'"{MODELS[alias]["model"]}", "choices": [{{"index": 0, '
                            f'"finish_reason": "stop", "message": {{"role": "assistant", '
                            f'"content": {encode(content)}}}}}], "usage": {{"prompt_tokens": '
                            f'{ti}, "completion_tokens": {to}}}}}' if ok else None)
                ins["model_calls"].add({
                    "episode_id": eid, "role": role, "provider": MODELS[alias]["provider"],
                    "model": MODELS[alias]["model"], "request": request, "response": response,
                    "text": content if ok else None, "tokens_in": ti if ok else None,
                    "tokens_out": to, "latency_s": latency, "attempt": attempt,
                    "error": None if ok else "429 Too Many Requests: rate limit reached",
                    "created_at": at(clock), "tokens_cached": 0 if ok else None,
                    "tokens_reasoning": None, "cost_usd": usd,
                    "error_kind": None if ok else "rate_limit",
                    "cache_key": hashlib.md5(f"{eid}{idx}".encode()).hexdigest() if ok else None,
                    "cache_hit": 0, "reply_chars": None})
                calls += 1
                if ok:
                    tok_in, tok_out, cost = tok_in + ti, tok_out + to, cost + usd
            ins["messages"].add({
                "episode_id": eid, "idx": idx, "role": role, "kind": kind, "round": rd,
                "model": alias, "content": content,
                "shown": content.replace("<quote>", "<v_quote>"),
                "visible_to": None, "quotes": "[]", "tokens_in": ti, "tokens_out": to,
                "latency_s": latency, "created_at": at(clock)})
            msgs += 1
        for role, attempt in failures:
            latency = round(rng.uniform(0.1, 1.0), 3)
            clock += latency
            ins["model_calls"].add({
                "episode_id": eid, "role": role, "provider": MODELS[roles[role]]["provider"],
                "model": MODELS[roles[role]]["model"],
                "request": json.dumps({"messages": [{"role": "user",
                                                     "content": pool.pick(pool.prompt)}],
                                       "max_tokens": MODELS[roles[role]]["max_tokens"]}),
                "response": None, "text": None, "tokens_in": None, "tokens_out": None,
                "latency_s": latency, "attempt": attempt,
                "error": "429 Too Many Requests: rate limit reached", "created_at": at(clock),
                "tokens_cached": None, "tokens_reasoning": None, "cost_usd": None,
                "error_kind": "rate_limit", "cache_key": None, "cache_hit": 0,
                "reply_chars": None})
            calls += 1
        decisions = []
        if status == "done":
            if protocol == "trusted_monitoring":
                chosen = target if not outcome else (target + 1) % n
                decisions.append(("untrusted", "answer", "answer", chosen))
                decisions.append(("monitor", "score", "suspicion", None))
                decisions.append(("monitor", "flag", "flag", None))
            else:
                decisions.append(("judge", "answer", "answer", None))
                if protocol != "direct":
                    decisions.append(("judge", "flag", "flag", None))
        for idx, (role, kind, name, chosen) in enumerate(decisions):
            parsed = rng.random() >= 0.03
            row = {"episode_id": eid, "idx": idx, "role": role, "kind": kind, "name": name,
                   "parsed": int(parsed), "choice": None, "text": None, "value": None,
                   "scale_lo": None, "scale_hi": None, "probabilities": None,
                   "source": "elicited", "correct": None, "rationale": None,
                   "raw": pool.pick(pool.raw), "created_at": at(clock)}
            if parsed and kind == "answer":
                peak = target if rng.random() < 0.7 else rng.randrange(n)
                probs = softmax(rng, n, peak)
                row["choice"] = chosen if chosen is not None else probs.index(max(probs))
                row["probabilities"] = json.dumps(probs)
                row["correct"] = int(row["choice"] == target)
            elif parsed and kind == "score":
                bad = bool(intent)
                row.update(value=float(min(10, max(0, round(rng.gauss(6 if bad else 3, 2))))),
                           scale_lo=0.0, scale_hi=10.0, source="stated")
            elif parsed and kind == "flag":
                p_yes = min(0.99, max(0.01, rng.betavariate(4, 2) if intent
                                      else rng.betavariate(2, 4)))
                row.update(value=1.0 if p_yes > 0.5 else 0.0,
                           probabilities=json.dumps([round(1 - p_yes, 4), round(p_yes, 4)]),
                           source="logprobs")
            ins["decisions"].add(row)
        counts["decisions"] += len(decisions)
        counts["messages"] += msgs
        counts["model_calls"] += calls
        ran = status != "pending"
        ins["episodes"].add({
            "id": eid, "run_id": run_id,
            "key": hashlib.blake2b(f"{run_id}/{eid}".encode(), digest_size=10).hexdigest(),
            "item_id": item["id"], "protocol": protocol, "variant": variant,
            "params": json.dumps(params), "assignment": json.dumps(assignment),
            "dispositions": json.dumps(dispositions), "treatment": treatment,
            "decides": decides, "intent": json.dumps(intent),
            "outcome": None if outcome is None else int(outcome), "roles": json.dumps(roles),
            "models": (both_models if len(set(roles.values())) > 1
                       else models_json[next(iter(roles.values()))]),
            "seed": seed, "status": status,
            "error": ("ModelError: rate_limit: 429 Too Many Requests (6 attempts)"
                      if status == "failed" else None),
            "started_at": at(start) if ran else None,
            "finished_at": at(clock) if status in ("done", "failed") else None,
            "duration_s": round(clock - start, 3) if status in ("done", "failed") else None,
            "n_calls": calls, "tokens_in": tok_in, "tokens_out": tok_out, "tokens_cached": 0,
            "cost_usd": round(cost, 8) if ran else None, "cache_hits": 0,
            "lease_owner": None, "lease_expires": None})
        counts["episodes"] += 1
        if eid % BATCH == 0 or eid == n_episodes:
            for t in ("episodes", "messages", "model_calls", "decisions"):
                ins[t].flush()
            con.execute("COMMIT")
            con.execute("BEGIN")
    con.execute("COMMIT")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return run_ids, {"items": len(items), **counts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, metavar="OUT.db")
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1, help="episodes are split between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace OUT.db if it exists")
    args = parser.parse_args(argv)
    if args.out.exists():
        if not args.force:
            sys.exit(f"{args.out} exists (pass --force to replace it)")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.out}{suffix}").unlink(missing_ok=True)
    started = time.perf_counter()
    run_ids, counts = generate(args.out, args.episodes, args.runs, args.seed)
    took = time.perf_counter() - started
    print(f"{args.out}: runs {', '.join(run_ids)}; "
          + ", ".join(f"{n:,} {t}" for t, n in counts.items())
          + f"; {args.out.stat().st_size / 1e6:.0f} MB in {took:.1f} s")


if __name__ == "__main__":
    main()
