"""`oversight view` without a browser (Starlette's TestClient): escaping of hostile text,
quote marks from the stored checks only, GET only, security headers, filters in the URL,
paging, the store left untouched, and the command's usage errors. The browser tests are in
test_viewer_browser.py."""

from __future__ import annotations

import hashlib
import re
import socket
from html.parser import HTMLParser

import pytest
from starlette.datastructures import QueryParams
from starlette.testclient import TestClient
from typer.testing import CliRunner
from viewer_store import (
    FORGED,
    HTML_MARK,
    LOOKALIKE,
    PAYLOADS,
    REAL_QUOTE,
    SCRIPT,
    STORE_FORGED,
    build,
)

from oversight.cli import app as cli_app
from oversight.store import Store
from oversight.viewer import create_app
from oversight.viewer.app import CSP
from oversight.viewer.filters import EpisodeFilter


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return build(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def client(hostile):
    store = Store(hostile["db"], readonly=True)
    with TestClient(create_app(store)) as c:
        yield c
    store.close()


def pages(h: dict) -> list[str]:
    return ["/", f"/run?id={h['source']}", f"/run?id={h['monitor']}", f"/run?id={h['rejudge']}",
            "/episodes", f"/episodes?run={h['source']}&q=script", f"/episode/{h['debate_episode']}",
            f"/episode/{h['failed_episode']}", f"/compare?a={h['source']}&b={h['rejudge']}",
            f"/compare?a={h['source']}&b={h['monitor']}",
            f"/compare/episodes?a={h['debate_episode']}&b={h['debate_episode'] + 1}",
            f"/detection?run={h['monitor']}", f"/detection?run={h['source']}"]


class Marks(HTMLParser):
    """The text inside elements whose class list has `quote` and `verified`."""

    def __init__(self):
        super().__init__()
        self.depth, self.found, self.current = 0, [], []

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if self.depth:
            self.depth += 1
        elif "quote" in classes and "verified" in classes:
            self.depth, self.current = 1, []

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1
            if not self.depth:
                self.found.append("".join(self.current))

    def handle_data(self, data):
        if self.depth:
            self.current.append(data)


def verified_quotes(html: str) -> list[str]:
    parser = Marks()
    parser.feed(html)
    return [t.lstrip("✓") for t in parser.found]


def test_every_page_renders_and_no_payload_reaches_the_html_unescaped(client, hostile):
    for url in pages(hostile):
        r = client.get(url)
        assert r.status_code == 200, (url, r.text[:500])
        for payload in PAYLOADS:
            assert payload not in r.text, (url, payload)
        assert not re.search(r"<(script|img|svg|iframe)\b[^>]*(onerror|onload|window\.__pwned)", r.text)
        assert 'href="javascript:' not in r.text.lower()
        assert re.findall(r"<script\b[^>]*>", r.text) == ['<script src="/static/viewer.js" defer>']
    episode = client.get(f"/episode/{hostile['debate_episode']}").text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in episode  # shown, as text
    assert "run &lt;script&gt;" in client.get("/").text  # the run's name too


def test_only_stored_checks_mark_a_quote_verified(client, hostile):
    html = client.get(f"/episode/{hostile['debate_episode']}").text
    assert set(verified_quotes(html)) == {REAL_QUOTE}
    for forged in (FORGED, LOOKALIKE, STORE_FORGED):
        assert forged in html
        assert not any(forged in q for q in verified_quotes(html))
    # a mark in `shown` that no stored check backs stays text, tags and all
    assert f"&lt;v_quote&gt;{STORE_FORGED}&lt;/v_quote&gt;" in html
    assert "&lt;span class=&#34;quote verified&#34;&gt;" in html or \
        "&lt;span class=&quot;quote verified&quot;&gt;" in html
    assert HTML_MARK not in html
    # the quoted span is highlighted in the hidden context, where it occurs
    assert re.search(r'<mark class="span-verified"[^>]*>village was a deep blue</mark>|'
                     r'<mark class="span-verified"[^>]*>the village was a deep blue</mark>', html)


def test_only_get_and_head(client, hostile):
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        for url in ("/", "/episodes", f"/episode/{hostile['debate_episode']}", "/nowhere",
                    "/static/viewer.css"):
            r = client.request(method, url)
            assert r.status_code == 405, (method, url)
            assert r.headers["allow"] == "GET, HEAD"
            assert r.headers["content-security-policy"] == CSP
    assert client.head("/episodes").status_code == 200


def test_security_headers_on_every_response(client, hostile):
    for url in ("/", "/static/viewer.js", "/static/viewer.css", "/nowhere", "/episode/999999",
                f"/plot/accuracy.png?run={hostile['source']}"):
        r = client.get(url)
        assert r.headers["content-security-policy"] == CSP, url
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    assert client.get("/episode/999999").status_code == 404
    assert client.get("/run?id=" + SCRIPT).status_code == 404
    assert SCRIPT not in client.get("/run?id=" + SCRIPT).text
    assert "script-src 'self'" in CSP and "'unsafe-inline'" not in CSP


def test_a_foreign_host_header_is_refused(client):
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/", headers={"host": "127.0.0.1:8000"}).status_code == 200


def test_filters_live_in_the_url_and_survive_paging(client, hostile):
    run = hostile["source"]
    r = client.get(f"/episodes?run={run}&protocol=debate&result=correct")
    ids = re.findall(r'class="ep-link" href="/episode/(\d+)"', r.text)
    assert ids and re.search(rf"{len(ids)} episodes?;", r.text)
    for i in ids:  # each row is what the filter asked for
        page = client.get(f"/episode/{i}").text
        assert "✓ correct" in page and "protocol debate" in page
    chips = re.findall(r'class="chip on" href="/episodes\?([^"]*)"', r.text)
    assert len(chips) == 3  # one removable chip per filter, each a link without it
    everything = client.get(f"/episodes?run={run}&per=25").text
    assert "page 1 of 1" not in everything or "15 episodes" in everything
    paged = client.get("/episodes?per=25&page=2&sort=cost&dir=desc").text
    assert "page 2 of 2" in paged
    prev = re.search(r'rel="prev" href="/episodes\?([^"]*)"', paged).group(1)
    assert "sort=cost" in prev and "dir=desc" in prev and "per=25" in prev


@pytest.mark.parametrize("query, expect", [
    ("run=a&run=b&model=judge:gpt&disposition=untrusted:schemer&intent=attack&susp_min=0.5"
     "&q=x&sort=cost&dir=desc&per=100&page=3",
     dict(run=("a", "b"), model=(("judge", "gpt"),), disposition=(("untrusted", "schemer"),),
          intent="attack", susp_min=0.5, q="x", sort="cost", desc=True, per=100, page=3)),
    ("sort=evil;drop&per=7&result=maybe&susp_max=nan&page=-4&model=nocolon",
     dict(sort="id", per=25, result=None, susp_max=None, page=1,
          model=())),
])
def test_filter_reads_back_what_it_writes(query, expect):
    f = EpisodeFilter.from_query(QueryParams(query))
    for k, v in expect.items():
        assert getattr(f, k) == v, k
    again = EpisodeFilter.from_query(QueryParams(f.query()))
    assert again == f


def test_bad_filter_values_are_dropped_and_said(client):
    r = client.get("/episodes?sort=evil&result=maybe&susp_min=abc")
    assert r.status_code == 200
    assert "ignored (not understood): sort, result, susp_min" in r.text


def test_browsing_leaves_the_store_byte_identical(client, hostile):
    db = hostile["db"]
    before = sha256(db)
    wal = db.with_name(db.name + "-wal")
    wal_before = wal.read_bytes() if wal.exists() else b""
    for url in pages(hostile):
        client.get(url)
    assert sha256(db) == before
    assert (wal.read_bytes() if wal.exists() else b"") == wal_before


def cli(*args):
    return CliRunner().invoke(cli_app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_usage_errors_exit_2(tmp_path, hostile):
    missing = cli("view", "--db", tmp_path / "nowhere.db")
    assert missing.exit_code == 2 and "no store here" in missing.stderr
    assert not (tmp_path / "nowhere.db").exists()
    (tmp_path / "notes.db").write_text("not a database")
    foreign = cli("view", "--db", tmp_path / "notes.db")
    assert foreign.exit_code == 2 and "error:" in foreign.stderr
    bad_port = cli("view", "--db", hostile["db"], "--port", "99999")
    assert bad_port.exit_code == 2 and "--port" in bad_port.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = cli("view", "--db", hostile["db"], "--port", taken.getsockname()[1])
    assert busy.exit_code == 2 and "cannot listen" in busy.stderr
    unknown = cli("view", "--db", hostile["db"], "--host", "no-such-host.invalid")
    assert unknown.exit_code == 2 and "--host" in unknown.stderr


def test_the_figures_are_the_analysis_figures(hostile):
    store = Store(hostile["db"], readonly=True)
    try:
        assert_figures_are_the_analysis_figures(store, hostile)
    finally:
        store.close()


def assert_figures_are_the_analysis_figures(store, h: dict) -> None:
    """The columnar reads give the figures the dict rows give: the detection curves and
    histograms (from the report's own columns, or read again), the comparisons, the plots."""
    from oversight.analysis.compare import compare_rows, variant_of
    from oversight.analysis.flagging import detector_records
    from oversight.analysis.report import build_report
    from oversight.viewer.figures import Figures, drawable, histograms, roc_curves
    from oversight.viewer.queries import Reader

    figures = Figures(Reader(store))
    for run_id in (h["source"], h["monitor"], h["rejudge"]):
        ids = (run_id,)
        report = build_report(store, [run_id])
        assert figures.report(ids) == report
        old = detector_records(store.results([run_id]),
                               store.decisions([run_id], kinds=("flag", "score")))
        expect = (roc_curves(report, old), histograms(report, old))
        assert figures.detection(ids) == expect
        again = Figures(figures.reader)
        again.report(ids)
        again.reads.clear()  # the report's columns gone: read again
        assert (roc_curves(report, again.records(ids)),
                histograms(report, again.records(ids))) == expect
        found = {(d.variant, d.detector, d.truth): d for d in report.detection}
        for c in expect[0]:  # as the report's detection section counts them
            d = found[(c.variant, c.detector, c.truth)]
            assert (c.auroc, c.n_honest, c.n_attack) == (d.auroc, d.n_honest, d.n_attack)
        for x in expect[1]:
            d = found[(x.variant, x.detector, x.truth)]
            assert (x.n_honest, x.n_attack) == (d.n_honest, d.n_attack)
            assert sum(b["honest"]["count"] + b["attack"]["count"] for b in x.bars) == \
                d.n_honest + d.n_attack
            assert x.missing == d.missing_honest + d.missing_attack + sum(
                1 for r in old if (r.variant, r.detector.label, r.truth) == (
                    x.variant, x.detector, x.truth) for s in r.records
                if s.score is None and s.attack is None)
        for name in ("accuracy", "reliability"):
            assert drawable(report, name) == (figures.png(ids, name) is not None)
    assert figures.detection((h["monitor"],))[0]  # some curve drawn

    def rows(run_id, variant):
        return [r for r in store.results([run_id]) if variant in (None, variant_of(r))]

    def name(side):
        return side[0] if side[1] is None else f"{side[0]}:{side[1]}"
    src = h["source"]
    for a, b in (((src, None), (h["rejudge"], None)), ((src, None), (h["monitor"], None)),
                 ((src, "debate"), (src, "consultancy"))):
        assert figures.comparison(a, b) == compare_rows(rows(*a), rows(*b), name(a), name(b))
