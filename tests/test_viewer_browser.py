"""`oversight view` in a real Chromium (Debian's, driven by Playwright): the command as a user
runs it, every page opened, filters applied, links followed from a run to an episode and to
a comparison; hostile text in model output, items, quotes and run names never runs and never
shows as verified; a POST answers 405; the store is byte-identical afterwards. Screenshots of
each page go to test-artifacts/screenshots/."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from debian import ensure
from viewer_store import FORGED, LOOKALIKE, REAL_QUOTE, SCRIPT, STORE_FORGED, build

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_view(db: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`oversight view --db DB --port 0 …` in a child process; (process, its URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "oversight", "view", "--db", str(db),
                             "--port", "0", *args], stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if m := re.search(r"(http://\S+/)", line):
            return proc, m.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("oversight view did not start:\n" + "".join(seen))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    h = build(tmp_path_factory.mktemp("viewer_browser"))
    wal = h["db"].with_name(h["db"].name + "-wal")
    h["before"] = (sha256(h["db"]), wal.read_bytes() if wal.exists() else b"")
    return h


@pytest.fixture(scope="module")
def server(hostile):
    proc, url = start_view(hostile["db"])
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser(server):
    """One Chromium for the module (after the store is built: Playwright's sync API keeps an
    event loop running in this thread, and the runner that builds the store needs its own)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = ensure("chromium", lambda: Path(CHROMIUM) if os.access(CHROMIUM, os.X_OK)
                          else None, "the viewer's browser tests drive Debian's Chromium")
        b = p.chromium.launch(executable_path=str(chromium), args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A page that records dialogs and console messages (a payload that ran would show)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=server)
    pg = context.new_page()
    pg.dialogs, pg.console = [], []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("console", lambda m: pg.console.append(f"{m.type}: {m.text}"))
    yield pg
    assert pg.dialogs == []
    assert not [m for m in pg.console if "Content Security Policy" in m or "error" in m], pg.console
    context.close()


def visit(page, url: str, shot: str | None = None):
    response = page.goto(url)
    assert response.status == 200, url
    assert page.evaluate("typeof window.__pwned") == "undefined", url
    if shot:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    return response


def hrefs(page) -> list[str]:
    return page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")


def test_each_page_opens_and_no_payload_runs(page, hostile):
    h = hostile
    for url, shot in [("/", "runs"), (f"/run?id={h['source']}", "run"),
                      (f"/run?id={h['monitor']}", "run_monitoring"), ("/episodes", "episodes"),
                      (f"/episode/{h['debate_episode']}", "episode"),
                      (f"/episode/{h['failed_episode']}", "episode_failed"),
                      (f"/compare?a={h['source']}&b={h['rejudge']}", "compare_rejudged"),
                      (f"/compare/episodes?a={h['debate_episode']}&b={h['debate_episode'] + 1}",
                       "side_by_side"),
                      (f"/detection?run={h['monitor']}", "detection")]:
        visit(page, url, shot)
        assert not [x for x in hrefs(page) if x.strip().lower().startswith("javascript:")]
        assert page.locator("img[onerror], svg[onload], a[href^='javascript']").count() == 0
    visit(page, "/")
    assert page.get_by_text(f"run {SCRIPT}", exact=False).count() >= 1  # the name, as text


def test_payloads_show_as_text_and_forged_quotes_never_verified(page, hostile):
    visit(page, f"/episode/{hostile['debate_episode']}")
    body = page.locator("main").inner_text()
    assert SCRIPT in body  # visible, as the characters the model wrote
    assert "What colour is the sky? " + SCRIPT in body
    verified = [t.lstrip("✓") for t in page.locator(".quote.verified").all_inner_texts()]
    assert verified and set(verified) == {REAL_QUOTE}
    for forged in (FORGED, LOOKALIKE, STORE_FORGED, "fake verified span"):
        assert forged in body
        assert not any(forged in t for t in verified)
    style = page.locator(".quote.verified").first.evaluate("e => getComputedStyle(e).backgroundColor")
    for text in (STORE_FORGED, "fake verified span"):  # plain text: not styled as verified
        holder = page.get_by_text(text, exact=False).first
        assert holder.evaluate("e => getComputedStyle(e).backgroundColor") != style
    mark = page.locator("mark.span-verified").first  # the quoted span in the hidden context
    assert REAL_QUOTE.split(" ", 1)[1] in mark.inner_text()
    page.locator(".quote.verified").first.click()  # a verified quote jumps to its span
    assert page.url.endswith("#ctx-" + page.locator(".quote.verified").first.get_attribute("id"))


def test_filters_apply_and_live_in_the_url(page, hostile):
    visit(page, f"/episodes?run={hostile['source']}")
    with page.expect_navigation():
        page.select_option("select[name=protocol]", "debate")  # applies at once (viewer.js)
    assert "protocol=debate" in page.url and "q=" not in page.url  # empty fields left out
    rows = page.locator("#episodes tbody tr")
    assert rows.count() == 6
    page.fill("input[name=q]", "refuse")
    with page.expect_navigation():
        page.click("form#filters button[type=submit]")
    assert "q=refuse" in page.url and "protocol=debate" in page.url
    assert page.locator("#count").inner_text().startswith("2 episodes")
    shared = page.url
    visit(page, shared, "episodes_filtered")  # the same view from the link alone
    assert page.locator("#count").inner_text().startswith("2 episodes")
    with page.expect_navigation():
        page.locator("a.chip.on", has_text="text: refuse").click()  # remove one filter
    assert "q=" not in page.url and "protocol=debate" in page.url


def test_links_lead_from_a_run_to_an_episode_and_a_comparison(page, hostile):
    visit(page, "/")
    with page.expect_navigation():
        page.locator("a.run-link", has_text=hostile["source"]).click()
    assert "/run?id=" in page.url
    with page.expect_navigation():
        page.locator("a.button", has_text="Episodes").click()
    with page.expect_navigation():
        page.locator("a.ep-link").first.click()
    assert re.search(r"/episode/\d+$", page.url)
    assert page.locator("h1").inner_text().startswith("Episode")
    visit(page, f"/run?id={hostile['source']}")
    page.select_option("form.inline select[name=b]", hostile["rejudge"])
    with page.expect_navigation():
        page.locator("form.inline button").click()
    assert "/compare?" in page.url
    assert page.locator("#paired tbody tr").count() >= 1
    assert "Re-judged decisions next to the originals" in page.locator("main").inner_text()
    with page.expect_navigation():
        page.locator("a.side-link").first.click()
    assert "/compare/episodes?" in page.url
    assert page.locator(".side").count() == 2
    visit(page, page.url, "compare_side_by_side")


def test_a_post_answers_405(page, server):
    for url in ("/", "/episodes", "/nowhere"):
        r = page.request.post(server.rstrip("/") + url, data="x=1")
        assert r.status == 405 and r.headers["allow"] == "GET, HEAD"


def test_binding_beyond_loopback_warns(hostile):
    proc = subprocess.Popen([sys.executable, "-m", "oversight", "view", "--db", str(hostile["db"]),
                             "--port", "0", "--host", "0.0.0.0"], stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert first.startswith("warning:") and "not 127.0.0.1" in first
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_store_is_unchanged_after_the_session(hostile, server, browser):
    db = hostile["db"]
    wal = db.with_name(db.name + "-wal")
    assert (sha256(db), wal.read_bytes() if wal.exists() else b"") == hostile["before"]
