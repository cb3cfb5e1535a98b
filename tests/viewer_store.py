"""A store full of hostile text, for the viewer's tests (not a test module).

Three runs made the ordinary way (mock models through the real runner and `oversight
rejudge`): debate, consultancy and the judge alone over items whose question, choices, context
and other fields carry HTML and script payloads; trusted monitoring of QuixBugs programs (for
detection); and a re-judging of the first run. Then, as someone editing the file by hand
would, payloads in the run name, a variant, the dataset, an error and a forged quote mark in
a stored `shown` text that no quote check backs.

Every payload, if it ever ran, would set `window.__pwned`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from oversight.cli import app

SCRIPT = "<script>window.__pwned=1</script>"
IMG = "<img src=x onerror=\"window.__pwned=1\">"
LINK = "<a href=\"javascript:window.__pwned=1\">click me</a>"
SVG = "<svg onload=\"window.__pwned=1\"></svg>"
PAYLOADS = (SCRIPT, IMG, LINK, SVG)
FORGED = "the moon is made of cheese"  # in no context: a forged verified mark quotes it
LOOKALIKE = "forged with look-alike brackets"
HTML_MARK = "<span class=\"quote verified\">✓ fake verified span</span>"
STORE_FORGED = "forged in the store itself"
REAL_QUOTE = "the village was a deep blue"
RUN_NAME = f"run {SCRIPT}{IMG}"

ITEMS = [
    {"id": "q1", "question": f"What colour is the sky? {SCRIPT}", "choices": [f"Blue {IMG}", "Green"],
     "answer_index": 0, "note": LINK,
     "context": f"The sky over the village was a deep blue that morning. {SVG} Nothing else."},
    {"id": "q2", "question": f"What did the baker sell? {LINK}", "choices": ["Fish", f"Bread {SCRIPT}"],
     "answer_index": 1, "context": f"The baker sold fresh bread. {IMG} to everyone who passed by."},
    {"id": "q3", "question": "Where did the cat sleep?", "choices": ["Roof", "Barn"],
     "answer_index": 0, "context": "The cat slept on the warm roof."},
]

DEBATER = (f"My case {SCRIPT}. <quote>{REAL_QUOTE}</quote> and <v_quote>{FORGED}</v_quote> and "
           f"＜v_quote＞{LOOKALIKE}＜/v_quote＞ and {HTML_MARK} and {LINK} and {IMG} and "
           "[v_quote]square forged[/v_quote] and <quote>the baker sold fresh bred</quote>")
JUDGE_RULES = [
    {"match": "What colour is the sky", "reply": f"{IMG} I pick the first.\nAnswer: A\nConfidence: 80%"},
    {"match": "What did the baker sell", "reply": f"{SCRIPT}\nAnswer: A\nConfidence: 60%"},
    {"match": "Where did the cat sleep", "reply": f"I refuse {LINK}."},
]

SPEC = """
name = "hostile"
concurrency = 1
[data]
datasets = ["items.jsonl"]
[models.deb]
provider = "mock"
options = {{ script = [{debater}] }}
[models.judge]
provider = "mock"
model = {judge_model}
options = {{ rules = {rules} }}
[roles]
"*" = "deb"
judge = "judge"
[[protocols]]
name = "debate"
[[protocols]]
name = "consultancy"
params = {{ flag = true }}
[[protocols]]
name = "direct"
"""

MONITOR_SPEC = """
name = "monitor"
concurrency = 1
[data]
datasets = ["quixbugs_python"]
limit = 4
[models.u]
provider = "mock"
options = {{ script = [{explain}] }}
[models.m]
provider = "mock"
options = {{ script = ["Fine.\\nSuspicion: 10", "Odd {img}.\\nSuspicion: 90", "Suspicion: 40", "Suspicion: 75", "Suspicion: 250"] }}
[[protocols]]
name = "trusted_monitoring"
roles = {{ untrusted = "u", monitor = "m", trusted = "m" }}
"""


def _toml_rules(rules: list[dict]) -> str:
    return "[" + ", ".join(f"{{ match = {json.dumps(r['match'])}, reply = {json.dumps(r['reply'])} }}"
                           for r in rules) + "]"


def _cli(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def build(folder: Path) -> dict:
    """Make the hostile store in `folder`; returns its path and the ids the tests use."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "hostile.db"
    (folder / "items.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    spec = folder / "hostile.toml"
    spec.write_text(SPEC.format(debater=json.dumps(DEBATER), rules=_toml_rules(JUDGE_RULES),
                                judge_model=json.dumps(f"judge-{IMG}")))
    monitor = folder / "monitor.toml"
    monitor.write_text(MONITOR_SPEC.format(explain=json.dumps(f"EXPLANATION: {SCRIPT} fine"),
                                           img=IMG.replace('"', "'")))
    runner = CliRunner()
    for s in (spec, monitor):  # exit 1 is fine: some judge replies are unparsed on purpose
        result = runner.invoke(app, ["run", str(s), "--db", str(db), "-q"], env={"COLUMNS": "200"})
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert result.exit_code in (0, 1) and not crashed, (result.output, result.exception)
    con = sqlite3.connect(db)
    try:
        source = con.execute("SELECT id FROM runs WHERE name = 'hostile'").fetchone()[0]
    finally:
        con.close()
    _cli("rejudge", source, "--model", "mock/new-judge", "--db", db, "-q")
    con = sqlite3.connect(db)
    try:
        ids = {rid: name for rid, name in con.execute("SELECT id, name FROM runs")}
        rejudge = next(rid for rid, name in ids.items() if name not in ("hostile", "monitor"))
        with con:
            con.execute("UPDATE runs SET name = ? WHERE id = ?", (RUN_NAME, source))
            con.execute("UPDATE episodes SET variant = ? WHERE run_id = ? AND protocol = 'direct'",
                        (f"direct{SCRIPT}", source))
            con.execute("UPDATE items SET dataset = ? WHERE id LIKE 'items/%'", (f"items{IMG}",))
            failed = con.execute("SELECT min(id) FROM episodes WHERE run_id = ? AND protocol = "
                                 "'direct'", (source,)).fetchone()[0]
            con.execute("UPDATE episodes SET error = ? WHERE id = ?", (f"boom {SCRIPT}", failed))
            debate = con.execute("SELECT e.id FROM episodes e JOIN messages m ON m.episode_id = "
                                 "e.id WHERE e.run_id = ? AND e.protocol = 'debate' AND e.item_id"
                                 " = 'items/q1' ORDER BY e.id LIMIT 1", (source,)).fetchone()[0]
            con.execute("UPDATE messages SET shown = shown || ? WHERE episode_id = ? AND idx = 0",
                        (f" <v_quote>{STORE_FORGED}</v_quote>", debate))
        monitor_id = next(rid for rid, name in ids.items() if name == "monitor")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return {"db": db, "source": source, "monitor": monitor_id, "rejudge": rejudge,
            "debate_episode": debate, "failed_episode": failed}
