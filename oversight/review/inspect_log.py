"""A stored run as inspect_ai `.eval` logs: one log per (run, variant), written only through
inspect's public API (`inspect_ai.log.write_eval_log` of an `EvalLog`), so `inspect view`,
`read_eval_log`, `list_eval_logs` and `inspect_ai.analysis` read them like inspect's own.

How the store maps into a log (a variant, one protocol configuration, is an inspect task):

- `EvalSpec`: `task` = the variant, `solver` = the protocol, `task_args` = its parameters;
  `model` = the deciding role's model and `model_roles` = every role's; `created` = the run's
  `created_at`; `eval_id`, `run_id` and `task_id` are digests of the run id, its `created_at`
  and the variant: stable across re-exports, distinct across runs and variants (inspect's
  defaults are empty strings, which collide). `metadata` names the oversight run, its spec
  and code hashes.
- one `EvalSample` per finished episode (done or failed; pending or interrupted ones are not
  samples, but count in `results.total_samples`): `id` = the episode id (`oversight show
  ID`), epoch 1, `uuid` a digest of the run and the episode key; `input` = the item's input,
  `choices` = its choices, `target` = the gold letter, answer or label ("" without gold);
  `messages` = the question as a user message, then the transcript, each message an
  assistant message headed "[role, round N]" with the role, kind, round, what others were
  shown and the quotes in its metadata; `metadata` = protocol, variant, params, assignment,
  dispositions, treatment, intent, outcome, roles, models, every decision, item id, dataset
  (and the episode's id, key, status and cost); `events` = one `ModelEvent` per stored model
  call attempt, with the call's role in `role`, its request's messages as `input`, its reply
  as `output` (usage, cost, error, `cache="read"` for response-cache hits) and the raw
  request and response as `call` (`inspect_ai.analysis.messages_df` and `events_df` are
  built from these events, and raise KeyError when a set of logs has none: an episode with
  a transcript but no stored calls, as an imported study's, gets one event per message,
  marked `reconstructed`); `error` = a failed episode's error.
- `scores["correct"]`, from the deciding role's last answer (the one `oversight report`
  scores): "C" or "I" when it parsed and the item has gold; unparsed, or without gold, it is
  `Score.unscored()` (value NaN, the sentinel inspect's metrics and reducers skip and count
  in `unscored_samples`), with the reason ("invalid_response_format" or "no_gold") and the
  raw reply. Never 0, never "N" (NOANSWER, which inspect's accuracy counts as 0). A failed
  episode, or one whose deciding role gave no answer, has no score.
- `results`: inspect's own `recompute_metrics` (accuracy, stderr) over those scores;
  `stats`: the run's `created_at`/`updated_at` and model and role usage summed over calls
  (tokens include the provider's prompt-cache reads, as `input_tokens_cache_read`).
- `status`: "success" when every episode of the variant finished and none failed; "error"
  (with the count) when some failed or the budget stopped the run; "cancelled" when the run
  was interrupted; "started" while it is still running.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from ..errors import OversightError
from ..store import Store, decisions, episodes, items, messages, model_calls, safe_url

INSTALL_HINT = "exporting inspect_ai logs needs inspect_ai: install oversight[inspect]"
SCORER = "correct"
METRICS = ("inspect_ai/accuracy", "inspect_ai/stderr")
FINISHED = ("done", "failed")  # episode statuses exported as samples


class InspectMissing(OversightError, ImportError):
    """inspect_ai is not installed (an OversightError, and an ImportError for callers that
    catch that)."""


def write_inspect_logs(store: Store, run_id: str, out_dir: str | Path) -> list[Path]:
    """Write one inspect_ai `.eval` log per variant of run `run_id` into `out_dir` (created if
    missing; a log written before for the same run and variant is replaced) and return their
    paths, in variant order. Raises InspectMissing (an OversightError and ImportError) without
    inspect_ai, OversightError for an unknown run."""
    ai = _inspect()
    run = store.run(run_id)
    if run is None:
        raise OversightError(f"{safe_url(store.url)}: no run {run_id!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant in _variants(store, run_id):
        log = _variant_log(ai, run, variant, _read_variant(store, run_id, variant))
        path = out / _file_name(run["created_at"], variant, log.eval.task_id)
        ai.write_eval_log(log, str(path), format="eval")
        paths.append(path)
    return paths


# what is used of inspect_ai, by module (all of it public API)
_INSPECT = {
    "event": ("ModelEvent",),
    "log": ("EvalConfig", "EvalDataset", "EvalError", "EvalLog", "EvalPlan", "EvalPlanStep",
            "EvalSample", "EvalSpec", "EvalStats", "recompute_metrics", "write_eval_log"),
    "model": ("ChatCompletionChoice", "ChatMessageAssistant", "ChatMessageSystem",
              "ChatMessageUser", "GenerateConfig", "ModelCall", "ModelConfig", "ModelOutput",
              "ModelUsage"),
    "scorer": ("CORRECT", "INCORRECT", "Score"),
}


def _inspect() -> SimpleNamespace:
    """inspect_ai's classes, imported only when an export is asked for (it is an extra)."""
    try:
        modules = {m: importlib.import_module(f"inspect_ai.{m}") for m in _INSPECT}
        version = importlib.import_module("inspect_ai").__version__
    except ImportError as exc:
        raise InspectMissing(f"{INSTALL_HINT} ({exc})") from exc
    return SimpleNamespace(version=version, **{name: getattr(modules[m], name)
                                               for m, names in _INSPECT.items() for name in names})


# -- reading the store ---------------------------------------------------------------------

def _variants(store: Store, run_id: str) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(conn.execute(select(episodes.c.variant).distinct()
                                   .where(episodes.c.run_id == run_id)).scalars())


def _read_variant(store: Store, run_id: str, variant: str) -> list[dict]:
    """The variant's episodes in id order, each with its item, messages, decisions and model
    calls (every attempt), in four queries."""
    e = episodes.c
    mine = (e.run_id == run_id) & (e.variant == variant)
    with store.engine.connect() as conn:
        eps = [dict(r) for r in
               conn.execute(select(episodes).where(mine).order_by(e.id)).mappings()]
        ids = select(e.id).where(mine)
        its = {r["id"]: dict(r) for r in conn.execute(
            select(items).where(items.c.id.in_(select(e.item_id).where(mine)))).mappings()}

        def rows(table, order):
            out = defaultdict(list)
            for r in conn.execute(select(table).where(table.c.episode_id.in_(ids))
                                  .order_by(table.c.episode_id, order)).mappings():
                out[r["episode_id"]].append(dict(r))
            return out

        msgs = rows(messages, messages.c.idx)
        made = rows(decisions, decisions.c.idx)
        calls = rows(model_calls, model_calls.c.id)
    return [{"episode": ep, "item": its.get(ep["item_id"]) or {}, "messages": msgs[ep["id"]],
             "decisions": made[ep["id"]], "calls": calls[ep["id"]]} for ep in eps]


# -- building the log ----------------------------------------------------------------------

def _variant_log(ai: SimpleNamespace, run: dict, variant: str, eps: list[dict]) -> Any:
    first = eps[0]["episode"]
    protocol, params = first["protocol"], first["params"] or {}
    roles, models = first["roles"] or {}, first["models"] or {}
    ident = (run["id"], run["created_at"])
    samples = [_sample(ai, run, ep) for ep in eps if ep["episode"]["status"] in FINISHED]
    scored = any(s.scores for s in samples)
    datasets = sorted({ep["item"].get("dataset") or "" for ep in eps} - {""})
    statuses: dict[str, int] = defaultdict(int)
    for ep in eps:
        statuses[ep["episode"]["status"]] += 1
    status, error = _status(ai, run["status"], statuses)
    decider = first["decides"] or next(iter(roles), None)

    spec = ai.EvalSpec(
        eval_id=_uid("eval", *ident, variant), run_id=_uid("run", *ident),
        task_id=_uid("task", *ident, variant), created=run["created_at"],
        task=variant, task_display_name=variant, task_version=0,
        task_args=params, task_args_passed=params, solver=protocol, solver_args=params,
        tags=["oversight", protocol],
        dataset=ai.EvalDataset(name=",".join(datasets) or None, samples=len(samples),
                               sample_ids=[s.id for s in samples]),
        model=_model_name(models, roles.get(decider)) if decider else "none/none",
        model_roles={role: ai.ModelConfig(
            model=_model_name(models, alias),
            config=ai.GenerateConfig(temperature=(models.get(alias) or {}).get("temperature"),
                                     max_tokens=(models.get(alias) or {}).get("max_tokens")),
            base_url=(models.get(alias) or {}).get("base_url")) for role, alias in roles.items()},
        config=ai.EvalConfig(epochs=1, fail_on_error=False),
        packages={"oversight": run["package_version"], "inspect_ai": ai.version},
        metadata={"oversight_run_id": run["id"], "run_name": run["name"],
                  "run_status": run["status"], "spec_path": run["spec_path"],
                  "spec_hash": run["spec_hash"], "spec_toml": run["spec_toml"],
                  "code": run["code"], "protocol": protocol, "variant": variant,
                  "decides": first["decides"], "roles": roles, "episodes": dict(statuses)},
        # the scorer as a log records it, so inspect's recompute_metrics can compute results
        scorers=[{"name": SCORER, "metrics": [{"name": m} for m in METRICS]}] if scored else None,
    )
    complete = status != "started"
    log = ai.EvalLog(
        status=status, eval=spec, error=error, samples=samples,
        plan=ai.EvalPlan(steps=[ai.EvalPlanStep(solver=protocol, params=params)]),
        stats=ai.EvalStats(started_at=run["created_at"],
                           completed_at=run["updated_at"] if complete else "",
                           model_usage=_usage(ai, eps, by="model"),
                           role_usage=_usage(ai, eps, by="role")),
    )
    if scored:
        ai.recompute_metrics(log)  # inspect's own metrics: NaN (unscored) values are skipped
        log.results.total_samples = len(eps)
    return log


def _status(ai: SimpleNamespace, run_status: str, statuses: dict[str, int]) -> tuple[str, Any]:
    total, failed = sum(statuses.values()), statuses.get("failed", 0)
    unfinished = total - failed - statuses.get("done", 0)
    if unfinished:
        if run_status == "interrupted":
            return "cancelled", None
        if run_status == "budget_exhausted":
            msg = f"the run's budget was exhausted with {unfinished} of {total} episodes not run"
            return "error", ai.EvalError(message=msg, traceback=msg, traceback_ansi=msg)
        return "started", None
    if failed:
        msg = f"{failed} of {total} episodes failed (see each sample's error)"
        return "error", ai.EvalError(message=msg, traceback=msg, traceback_ansi=msg)
    return "success", None


def _sample(ai: SimpleNamespace, run: dict, ep: dict) -> Any:
    e, item = ep["episode"], ep["item"]
    roles, models = e["roles"] or {}, e["models"] or {}
    uuid = _uid("sample", run["id"], run["created_at"], e["key"])
    start = _time(e["started_at"])
    transcript = [ai.ChatMessageUser(id=f"{uuid}.input", content=_question(item),
                                     source="input")]
    for m in ep["messages"]:
        head = f"[{m['role']}" + (f", round {m['round']}" if m["round"] is not None else "") + "]"
        meta = {k: m[k] for k in ("role", "kind", "round", "idx", "visible_to", "quotes",
                                  "tokens_in", "tokens_out", "latency_s", "created_at")}
        meta["model"] = m["model"]
        if m["shown"] != m["content"]:
            meta["shown"] = m["shown"]  # what the other roles saw: quotes marked
        transcript.append(ai.ChatMessageAssistant(
            id=f"{uuid}.m{m['idx']}", content=f"{head}\n{m['content']}", source="generate",
            model=_model_name(models, roles.get(m["role"]) or m["model"]), metadata=meta))

    final = _final_answer(e, ep["decisions"])
    decider_model = _model_name(models, roles.get(e["decides"])) if e["decides"] else ""
    output = ai.ModelOutput(model=decider_model)
    if final is not None:
        output = _output(ai, decider_model, final["raw"], f"{uuid}.output")
    scores = None
    if final is not None and e["status"] == "done":
        scores = {SCORER: _score(ai, item, final)}
    error = None
    if e["status"] == "failed":
        msg = e["error"] or "the episode failed"
        error = ai.EvalError(message=msg, traceback=msg, traceback_ansi=msg)

    return ai.EvalSample(
        id=e["id"], epoch=1, uuid=uuid, input=item.get("input") or "",
        choices=list(item["choices"]) if item.get("choices") else None,
        target=_target(item), messages=transcript, output=output, scores=scores,
        metadata={"protocol": e["protocol"], "variant": e["variant"], "params": e["params"],
                  "assignment": e["assignment"], "dispositions": e["dispositions"],
                  "treatment": e["treatment"], "intent": e["intent"], "outcome": e["outcome"],
                  "roles": roles, "models": models, "decides": e["decides"],
                  "decisions": [_decision(d) for d in ep["decisions"]],
                  "item_id": e["item_id"], "dataset": item.get("dataset"),
                  "item_kind": item.get("kind"), "item_label": item.get("label"),
                  "episode_id": e["id"], "episode_key": e["key"], "status": e["status"],
                  "seed": e["seed"], "n_calls": e["n_calls"], "cache_hits": e["cache_hits"],
                  "cost_usd": e["cost_usd"], "document": item.get("document"),
                  # a re-judging's episode: the stored episode whose transcript it judged
                  "source_episode_id": e.get("source_episode_id")},
        events=([_event(ai, uuid, c, roles, models, start) for c in ep["calls"]]
                or _transcript_events(ai, uuid, ep["messages"], roles, models)),
        model_usage=_usage(ai, [ep], by="model"), role_usage=_usage(ai, [ep], by="role"),
        started_at=e["started_at"], completed_at=e["finished_at"],
        total_time=e["duration_s"], working_time=e["duration_s"], error=error,
    )


def _final_answer(e: dict, made: list[dict]) -> dict | None:
    """The deciding role's last answer decision: the one `Store.results` (and the report)
    scores."""
    answers = [d for d in made if d["role"] == e["decides"] and d["kind"] == "answer"]
    return answers[-1] if answers else None


def _score(ai: SimpleNamespace, item: dict, d: dict) -> Any:
    meta = {"role": d["role"], "name": d["name"], "decision_idx": d["idx"],
            "probabilities": d["probabilities"], "source": d["source"]}
    if not d["parsed"]:  # counted and excluded, never scored as wrong
        return ai.Score.unscored(reason="invalid_response_format", explanation=d["raw"],
                                 metadata=meta)
    answer = _answer_text(item, d)
    explanation = d["rationale"] or d["raw"]
    if d["correct"] is None:  # no gold applies
        return ai.Score.unscored(reason="no_gold", answer=answer, explanation=explanation,
                                 metadata=meta)
    return ai.Score(value=ai.CORRECT if d["correct"] else ai.INCORRECT, answer=answer,
                    explanation=explanation, metadata=meta)


def _answer_text(item: dict, d: dict) -> str | None:
    if d["choice"] is not None and item.get("choices"):
        return _letter(d["choice"])
    return d["text"] if d["text"] is not None else (
        None if d["choice"] is None else str(d["choice"]))


def _decision(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("id", "episode_id")}


def _event(ai: SimpleNamespace, uuid: str, c: dict, roles: dict, models: dict,
           start: datetime | None) -> Any:
    """One model call attempt as inspect records a generate call."""
    request = c["request"] if isinstance(c["request"], dict) else {}
    name = _model_name(models, roles.get(c["role"]), c["provider"], c["model"])
    prefix = f"{uuid}.c{c['id']}"
    done = _time(c["created_at"])
    began = done - timedelta(seconds=c["latency_s"] or 0.0) if done else None
    output = ai.ModelOutput(model=name, error=c["error"])
    if c["text"] is not None:
        output = _output(ai, name, c["text"], f"{prefix}.out", _stop_reason(c["response"]))
    output.usage = _call_usage(ai, c)
    output.time = c["latency_s"]
    config = ai.GenerateConfig(
        temperature=request.get("temperature"), max_tokens=request.get("max_tokens"),
        stop_seqs=list(request.get("stop") or []) or None,
        logprobs=request.get("logprobs"), top_logprobs=request.get("top_logprobs") or None)
    extra = {k: c[k] for k in ("id", "attempt", "error_kind", "cost_usd", "cache_hit",
                               "cache_key", "reply_chars")}
    fields: dict[str, Any] = {}
    if began is not None:
        fields["timestamp"] = began
        fields["completed"] = done
        if start is not None:
            fields["working_start"] = max(0.0, (began - start).total_seconds())
    return ai.ModelEvent(
        uuid=f"{prefix}.event", model=name, role=c["role"],
        input=_request_messages(ai, request, prefix), tools=[], tool_choice="none",
        config=config, output=output, error=c["error"], cache="read" if c["cache_hit"] else None,
        call=ai.ModelCall(request=request, response=c["response"], error=c["error"] is not None,
                          time=c["latency_s"]),
        working_time=c["latency_s"], metadata={"oversight_call": extra}, **fields)


def _transcript_events(ai: SimpleNamespace, uuid: str, msgs: list[dict], roles: dict,
                       models: dict) -> list:
    """For an episode with a transcript but no stored calls (an imported study): one model
    event per message, its text as the output, marked `reconstructed` in its metadata and with
    no input (what the model was shown is unknown). Without any model event in a set of logs,
    inspect_ai.analysis.messages_df and events_df raise KeyError."""
    out = []
    for m in msgs:
        name = _model_name(models, roles.get(m["role"]) or m["model"])
        fields = {"timestamp": t} if (t := _time(m["created_at"])) else {}
        out.append(ai.ModelEvent(
            uuid=f"{uuid}.t{m['idx']}.event", model=name, role=m["role"], input=[], tools=[],
            tool_choice="none", config=ai.GenerateConfig(),
            output=_output(ai, name, m["content"], f"{uuid}.t{m['idx']}.out"),
            metadata={"reconstructed": "from the stored transcript: no model call was stored",
                      "message_idx": m["idx"]}, **fields))
    return out


def _request_messages(ai: SimpleNamespace, request: dict, prefix: str) -> list:
    kinds = {"system": ai.ChatMessageSystem, "assistant": ai.ChatMessageAssistant}
    out = []
    for i, m in enumerate(request.get("messages") or []):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else m
        out.append(kinds.get(role, ai.ChatMessageUser)(id=f"{prefix}.in{i}",
                                                        content=str(content or "")))
    return out


def _output(ai: SimpleNamespace, model: str, text: str, msg_id: str,
            stop_reason: str = "stop") -> Any:
    message = ai.ChatMessageAssistant(id=msg_id, content=text, model=model, source="generate")
    return ai.ModelOutput(model=model, choices=[ai.ChatCompletionChoice(
        message=message, stop_reason=stop_reason)])


def _stop_reason(response: Any) -> str:
    """inspect's stop reason from a stored provider body (OpenAI, Anthropic), if it says."""
    reason = None
    if isinstance(response, dict):
        reason = response.get("stop_reason")
        choices = response.get("choices")
        if reason is None and isinstance(choices, list) and choices \
                and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
    return {"stop": "stop", "end_turn": "stop", "stop_sequence": "stop", "length": "max_tokens",
            "max_tokens": "max_tokens", "content_filter": "content_filter",
            "refusal": "content_filter", "tool_calls": "tool_calls",
            "tool_use": "tool_calls"}.get(reason, "stop" if response is None else "unknown")


def _call_usage(ai: SimpleNamespace, c: dict) -> Any:
    tin, tout, cached = c["tokens_in"] or 0, c["tokens_out"] or 0, c["tokens_cached"]
    # oversight counts the whole prompt in tokens_in; inspect's input_tokens excludes the
    # part read from the provider's cache, reported beside it
    return ai.ModelUsage(input_tokens=tin - (cached or 0), output_tokens=tout,
                         total_tokens=tin + tout, input_tokens_cache_read=cached,
                         reasoning_tokens=c["tokens_reasoning"], total_cost=c["cost_usd"])


def _usage(ai: SimpleNamespace, eps: list[dict], *, by: str) -> dict[str, Any]:
    """Usage summed per model name or per role over every call attempt (cache hits included,
    as in the episode's totals); cost None once an answered real call could not be priced."""
    total: dict[str, Any] = {}
    unpriced: set[str] = set()
    for ep in eps:
        e = ep["episode"]
        roles, models = e["roles"] or {}, e["models"] or {}
        for c in ep["calls"]:
            key = (c["role"] or "") if by == "role" else _model_name(
                models, roles.get(c["role"]), c["provider"], c["model"])
            usage = _call_usage(ai, c)
            if c["cost_usd"] is None and c["error"] is None and not c["cache_hit"]:
                unpriced.add(key)
            total[key] = total[key] + usage if key in total else usage
    for key in unpriced:
        total[key].total_cost = None
    return total


# -- small helpers -------------------------------------------------------------------------

def _uid(*parts: Any) -> str:
    """A deterministic id (22 hex digits, like the length of inspect's own): no '-' or '_',
    so it survives inspect's log file name parsing."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:22]


def _model_name(models: dict, alias: str | None, provider: str | None = None,
                model: str | None = None) -> str:
    """"provider/model" as inspect names models; the alias stands in for a model without a
    name (mock)."""
    cfg = (models or {}).get(alias) or {}
    name = model or cfg.get("model") or alias or "unknown"
    return f"{provider or cfg.get('provider') or 'unknown'}/{name}"


def _letter(i: int) -> str:
    return chr(ord("A") + int(i))


def _target(item: dict) -> str:
    target = item.get("target")
    if target is None:
        return ""
    if item.get("kind") == "choice" and isinstance(target, int):
        return _letter(target)
    return str(target)


def _question(item: dict) -> str:
    text = item.get("input") or ""
    choices = item.get("choices") or []
    if choices:
        text += "\n\n" + "\n".join(f"{_letter(i)}) {c}" for i, c in enumerate(choices))
    if item.get("labels"):
        text += "\n\nLabels: " + ", ".join(str(x) for x in item["labels"])
    return text


def _time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _file_name(created: str, variant: str, task_id: str) -> str:
    """inspect's own log name, {created}_{task}_{id}.eval, with each part free of '_' (the
    separator `list_eval_logs` splits on) and of characters unsafe in a file name."""
    def part(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9.=,-]+", "-", s).strip("-") or "x"
    return f"{part(created)}_{part(variant)}_{task_id}.eval"
