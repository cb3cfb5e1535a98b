"""The viewer's pages. Each endpoint is synchronous (Starlette runs it in a thread, off the
event loop), reads through `Reader` / `Figures`, and renders a template. Every link to stored
data is built here or in the templates from route names and urlencode, never from a stored
string used as a URL."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .figures import PLOT_H, PLOT_W, drawable
from .filters import PAGE_SIZES, EpisodeFilter
from .transcript import locate, message_segments

PAIRS_PER_PAGE = 50


def _render(request: Request, name: str, status: int = 200, **context) -> Response:
    templates = request.app.state.templates
    context.setdefault("store_name", request.app.state.store_name)
    return templates.TemplateResponse(request, name, context, status_code=status)


def _reader(request: Request):
    return request.app.state.reader


def _figures(request: Request):
    return request.app.state.figures


def _run_or_404(request: Request, run_id: str | None) -> dict:
    run = _reader(request).run(run_id) if run_id else None
    if run is None:
        raise HTTPException(404, "no such run in this store")
    return run


def _int(value: str | None, default: int, lo: int = 1) -> int:
    try:
        return max(lo, int(value)) if value else default
    except ValueError:
        return default


# -- runs --------------------------------------------------------------------------------
def runs_page(request: Request) -> Response:
    return _render(request, "runs.html", runs=_reader(request).runs())


def run_page(request: Request) -> Response:
    run = _run_or_404(request, request.query_params.get("id"))
    from ..analysis.report import rejudged_run
    figures = _figures(request)
    report = figures.report((run["id"],))
    listed = next((r for r in _reader(request).runs() if r["id"] == run["id"]), None)
    others = [r for r in _reader(request).run_ids() if r != run["id"]]
    return _render(request, "run.html", run=run, listed=listed, report=report,
                   rejudges=rejudged_run(run), others=others,
                   plots=[name for name in ("accuracy", "reliability")
                          if drawable(report, name)])  # drawn when the browser asks


def plot_png(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ("accuracy", "reliability"):
        raise HTTPException(404, "no such figure")
    run = _run_or_404(request, request.query_params.get("run"))
    data = _figures(request).png((run["id"],), name)
    if data is None:
        raise HTTPException(404, "nothing to draw for this run")
    return Response(data, media_type="image/png")


# -- episodes ----------------------------------------------------------------------------
def episodes_page(request: Request) -> Response:
    f = EpisodeFilter.from_query(request.query_params)
    reader = _reader(request)
    facets = reader.facets(f.run)
    page = reader.episodes_page(f, facets)
    pages = max(1, -(-page.total // f.per))
    return _render(request, "episodes.html", f=f, facets=facets, page=page, pages=pages,
                   page_sizes=PAGE_SIZES, run_ids=reader.run_ids())


def episode_page(request: Request) -> Response:
    episode_id = request.path_params["episode_id"]
    data = _reader(request).episode(episode_id)
    if data is None:
        raise HTTPException(404, f"no episode {episode_id} in this store")
    return _render(request, "episode.html", **episode_context(data, "q"))


def episode_context(data: dict, prefix: str) -> dict:
    """What episode.html (and each side of a comparison) shows of one episode: the roles in
    order (their colours), the transcript by round with quotes as segments, the context with
    the quoted spans highlighted."""
    ep, item = data["episode"], data["item"] or {}
    roles = list(dict.fromkeys([*(ep.get("roles") or {}), *(m["role"] for m in data["messages"]),
                                *(d["role"] for d in data["decisions"])]))
    colour = {r: i for i, r in enumerate(roles)}
    spans = []
    msgs = []
    for m in data["messages"]:
        segs = message_segments(m["shown"], m["quotes"], f"{prefix}{ep['id']}-{m['idx']}")
        spans += [(s.quote["anchor"], s.text, s.quote["status"]) for s in segs if s.quote]
        msgs.append({**m, "segments": segs, "colour": colour.get(m["role"], 0)})
    parts, found = locate(item.get("context") or "", spans)
    for m in msgs:
        for s in m["segments"]:
            if s.quote:
                s.quote["found"] = s.quote["anchor"] in found
    return {"data": data, "ep": ep, "item": item, "roles": roles, "colour": colour,
            "rounds": _rounds(msgs), "context_parts": parts, "prefix": prefix}


def _rounds(msgs: list[dict]) -> list[dict]:
    """Consecutive messages of one round together (one column per role); messages outside
    rounds each on their own."""
    out: list[dict] = []
    for m in msgs:
        if m.get("round") is not None and out and out[-1]["round"] == m["round"]:
            out[-1]["messages"].append(m)
        else:
            out.append({"round": m.get("round"), "messages": [m]})
    for group in out:
        group["roles"] = list(dict.fromkeys(m["role"] for m in group["messages"]))
    return out


# -- compare -----------------------------------------------------------------------------
def _side(request: Request, name: str) -> tuple[str, str | None] | None:
    run_id = request.query_params.get(name)
    if not run_id:
        return None
    run = _run_or_404(request, run_id)
    return run["id"], request.query_params.get(f"{name}v") or None


def compare_page(request: Request) -> Response:
    from ..analysis.report import rejudged_run
    reader = _reader(request)
    a, b = _side(request, "a"), _side(request, "b")
    context = {"a": a, "b": b, "run_ids": reader.run_ids(), "comparison": None, "pairs": [],
               "total": 0, "rejudged": False}
    if a and b:
        page = _int(request.query_params.get("page"), 1)
        comparison = _figures(request).comparison(a, b)
        rejudged = rejudged_run(reader.run(b[0]) or {}) == a[0] and a[1] is None and b[1] is None
        if rejudged:
            pairs, total = reader.rejudged_pairs(b[0], PAIRS_PER_PAGE, (page - 1) * PAIRS_PER_PAGE)
        else:
            pairs, total = reader.shared_items(a, b, PAIRS_PER_PAGE, (page - 1) * PAIRS_PER_PAGE)
        base = [("a", a[0]), ("b", b[0])] + [(k, v) for k, v in (("av", a[1]), ("bv", b[1])) if v]
        context.update(comparison=comparison, pairs=pairs, total=total, rejudged=rejudged,
                       page=page, pages=max(1, -(-total // PAIRS_PER_PAGE)), base=base)
    return _render(request, "compare.html", **context)


def side_by_side_page(request: Request) -> Response:
    reader = _reader(request)
    sides = []
    for name in ("a", "b"):
        episode_id = _int(request.query_params.get(name), 0, lo=0)
        data = reader.episode(episode_id) if episode_id else None
        if data is None:
            raise HTTPException(404, f"{name}: no such episode in this store")
        sides.append(episode_context(data, name))
    return _render(request, "side_by_side.html", sides=sides)


# -- detection ---------------------------------------------------------------------------
def detection_page(request: Request) -> Response:
    run = _run_or_404(request, request.query_params.get("run"))
    figures = _figures(request)
    report = figures.report((run["id"],))
    curves, hists = figures.detection((run["id"],))
    return _render(request, "detection.html", run=run, report=report, curves=curves,
                   histograms=hists, W=PLOT_W, H=PLOT_H)


# -- errors ------------------------------------------------------------------------------
def _error(request: Request, exc: HTTPException) -> Response:
    return _render(request, "error.html", status=exc.status_code, status_code=exc.status_code,
                   detail=exc.detail)


ERROR_HANDLERS = {HTTPException: _error}
