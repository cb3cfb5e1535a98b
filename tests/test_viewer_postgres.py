"""`oversight view` on PostgreSQL: the hostile store pushed into a real server, the app on its
`postgresql+psycopg://` URL (read-only), every page through Starlette's TestClient: rendered,
escaped, the same episodes as on SQLite for the same filters, and nothing written."""

from __future__ import annotations

import re
import sqlite3
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool
from starlette.testclient import TestClient
from test_viewer import assert_figures_are_the_analysis_figures, pages
from typer.testing import CliRunner
from viewer_store import IMG, PAYLOADS, build

from oversight.cli import app as cli_app
from oversight.store import Store, metadata
from oversight.viewer import create_app

pytestmark = pytest.mark.slow
EP_LINK = r'class="ep-link" href="/episode/(\d+)"'


@pytest.fixture(scope="module")
def stores(tmp_path_factory, pg_server):
    """The hostile store on SQLite and, pushed run by run, on PostgreSQL; the ids of both."""
    h = build(tmp_path_factory.mktemp("viewer_pg"))
    vary(h)
    url = pg_server.create_database("viewer")
    for run_id in (h["source"], h["monitor"], h["rejudge"]):  # a re-judging after its source
        res = CliRunner().invoke(cli_app, ["push", run_id, "--db", str(h["db"]), "--to", url])
        assert res.exit_code == 0, res.output
    by_key = {}
    for where in (f"sqlite:///{h['db']}", url):
        engine = create_engine(where, poolclass=NullPool)
        with engine.connect() as conn:
            by_key[where] = dict(conn.execute(text("SELECT run_id || '/' || key, id FROM "
                                                   "episodes")).all())
        engine.dispose()
    lite, pg = by_key.values()
    to_pg = {lite[k]: pg[k] for k in lite}
    assert len(to_pg) == len(pg) == len(lite)
    return h, url, to_pg


def vary(h: dict) -> None:
    """What the mock runs leave alike made to differ, as sorting and filtering on PostgreSQL
    must treat it as SQLite does: NULL and distinct costs and times, an empty variant, a
    failed episode, parsed flags either way, an unknown outcome."""
    con = sqlite3.connect(h["db"])
    with con:
        con.execute("UPDATE episodes SET cost_usd = CASE id % 3 WHEN 0 THEN NULL "
                    "ELSE (id % 5) * 0.001 END, duration_s = CASE WHEN id % 4 = 0 THEN NULL "
                    "ELSE (id % 7) * 0.5 END, tokens_in = id % 6")
        con.execute("UPDATE episodes SET variant = '' WHERE protocol = 'consultancy'")
        con.execute("UPDATE episodes SET status = 'failed' WHERE id = ?", (h["failed_episode"],))
        flags = [i for (i,) in con.execute("SELECT id FROM decisions WHERE kind = 'flag' "
                                           "ORDER BY id")]
        for n, i in enumerate(flags[:6]):
            con.execute("UPDATE decisions SET parsed = 1, value = ? WHERE id = ?", (n % 2, i))
        con.execute("UPDATE episodes SET outcome = NULL WHERE id = (SELECT min(id) FROM "
                    "episodes WHERE run_id = ?)", (h["monitor"],))
    con.close()


@pytest.fixture(scope="module")
def clients(stores):
    h, url, _ = stores
    lite, pg = Store(h["db"], readonly=True), Store(url, readonly=True)
    with TestClient(create_app(lite)) as a, TestClient(create_app(pg)) as b:
        yield a, b
    lite.close()
    pg.close()


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                    for name, t in metadata.tables.items()}
    finally:
        engine.dispose()


def pg_pages(h: dict, to_pg: dict) -> list[str]:
    """test_viewer's pages with PostgreSQL's episode ids, and a plot."""
    ids = {str(k): str(v) for k, v in to_pg.items()}
    return [re.sub(r"(/episode/|[?&][ab]=)(\d+)", lambda m: m.group(1) + ids[m.group(2)], u)
            for u in pages(h)] + [f"/plot/accuracy.png?run={h['source']}", variants(h)]


def variants(h: dict) -> str:
    """The comparison of two variants of a run, one of them named by its protocol."""
    return f"/compare?a={h['source']}&av=debate&b={h['source']}&bv=consultancy"


def filters(h: dict) -> list[str]:
    src, mon = h["source"], h["monitor"]
    return ["", f"run={src}&protocol=debate&result=correct", f"run={src}&q=script",
            "q=SCRIPT", "q=%25_", f"run={src}&result=unparsed", f"run={src}&result=no_answer",
            f"run={src}&result=wrong", f"run={mon}&intent=attack", f"run={mon}&intent=honest",
            f"run={src}&flagged=yes", f"run={src}&flagged=no", f"run={mon}&susp_min=50",
            f"run={mon}&susp_max=40", f"run={mon}&outcome=bad", f"run={mon}&outcome=unknown",
            "status=failed", f"dataset={quote('items' + IMG)}", "variant=consultancy",
            "model=judge:" + quote(f"judge-{IMG}"), "model=judge:new-judge", "variant=debate",
            "disposition=untrusted:schemer", "sort=cost&dir=desc&per=25&page=2",
            "sort=duration&per=25&page=2", "sort=tokens&dir=desc", "sort=variant",
            "sort=item&dir=desc", "sort=status", "per=25&page=9", "sort=calls&per=25&page=2",
            "sort=cost&per=25", "sort=duration&dir=desc", "sort=variant&dir=desc"]


def test_every_page_renders_on_postgres_escaped(clients, stores):
    _, pg = clients
    h, _, to_pg = stores
    for url in pg_pages(h, to_pg):
        r = pg.get(url)
        assert r.status_code == 200, (url, r.text[:800])
        if url.startswith("/plot/"):
            assert r.headers["content-type"] == "image/png"
            continue
        for payload in PAYLOADS:
            assert payload not in r.text, (url, payload)
        assert re.findall(r"<script\b[^>]*>", r.text) == ['<script src="/static/viewer.js" defer>']
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in \
        pg.get(f"/episode/{to_pg[h['debate_episode']]}").text


def test_filtered_pages_show_the_same_episodes_as_sqlite(clients, stores):
    lite, pg = clients
    h, _, to_pg = stores
    for query in filters(h):
        a, b = lite.get(f"/episodes?{query}"), pg.get(f"/episodes?{query}")
        assert a.status_code == b.status_code == 200, (query, b.text[:800])
        count = re.compile(r'<p class="count" id="count">([^<]*)</p>')
        assert count.search(b.text).group(1) == count.search(a.text).group(1), query
        ids = [to_pg[int(i)] for i in re.findall(EP_LINK, a.text)]
        assert [int(i) for i in re.findall(EP_LINK, b.text)] == ids, query
    assert re.findall(EP_LINK, lite.get(f"/episodes?run={h['source']}&q=script").text)
    assert re.findall(EP_LINK, lite.get("/episodes?q=SCRIPT").text)  # case-insensitive


def test_the_figure_pages_agree_with_sqlite(clients, stores):
    lite, pg = clients
    h, _, _ = stores
    number = re.compile(r"\d+(?:\.\d+)?%?")

    def figures(html: str) -> list[str]:
        """The numbers of the page past the header (the store's name), without the links to
        episodes (ids are each store's own)."""
        main = html[html.index("<main"):]
        return number.findall(re.sub(r'<a [^>]*href="/(episode|compare/episodes)[^>]*>[^<]*</a>',
                                     "", main))
    for url in (f"/run?id={h['source']}", f"/detection?run={h['monitor']}",
                f"/detection?run={h['source']}",
                f"/compare?a={h['source']}&b={h['rejudge']}", variants(h)):
        assert figures(pg.get(url).text) == figures(lite.get(url).text), url


def test_browsing_postgres_writes_nothing(clients, stores):
    _, pg = clients
    h, url, to_pg = stores
    store = pg.app.state.reader.store
    with store.engine.connect() as conn:
        assert conn.execute(text("SHOW default_transaction_read_only")).scalar_one() == "on"
    before = row_counts(url)
    for page in pg_pages(h, to_pg):
        pg.get(page)
    for query in filters(h):
        pg.get(f"/episodes?{query}")
    assert row_counts(url) == before


def test_the_figures_are_the_analysis_figures_on_both(clients, stores):
    """On the varied store (unknown truths, parsed flags) and on PostgreSQL."""
    for client in clients:
        assert_figures_are_the_analysis_figures(client.app.state.reader.store, stores[0])
