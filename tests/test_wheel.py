"""The wheel carries the built-in protocols and prompts: install it into a clean venv and run
a spec from a directory that is not the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and installs it into fresh venvs

ROOT = Path(__file__).resolve().parents[1]

MOCK_SPEC = """
name = "wheel-smoke"
[data]
datasets = ["boolq"]
limit = 1
[models.m]
provider = "mock"
options = { rules = [{match = "Answer: <one letter", reply = "Answer: A\\nConfidence: 90%"}], script = ["<quote>magnesium</quote>"] }
[roles]
"*" = "m"
[[protocols]]
name = "direct"
[[protocols]]
name = "debate"
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with only the built wheel (and its dependencies) installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(ROOT)],
                   check=True)
    wheel = next(tmp.glob("oversight-*.whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True)
    return env_dir / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OVERSIGHT_DB")}
    return subprocess.run([str(bin_dir / "oversight"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_wheel_lists_builtin_protocols_from_its_own_files(installed, tmp_path):
    out = _run(installed, "protocols", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("direct", "oracle", "consultancy", "debate"):
        assert name in out.stdout
    assert str(ROOT) not in out.stdout  # loaded from site-packages, not from this checkout


def test_wheel_runs_a_spec_from_another_directory(installed, tmp_path):
    (tmp_path / "smoke.toml").write_text(MOCK_SPEC)
    out = _run(installed, "run", "smoke.toml", "--db", "store.db", "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "store.db").exists()
    import sqlite3
    with sqlite3.connect(tmp_path / "store.db") as db:
        done = db.execute("SELECT protocol, count(*) FROM episodes WHERE status='done' "
                          "GROUP BY protocol ORDER BY protocol").fetchall()
    assert done == [("debate", 2), ("direct", 1)]


def test_wheel_runs_a_user_protocol_folder(installed, tmp_path):
    (tmp_path / "protocols").mkdir()
    (tmp_path / "prompts" / "second_opinion").mkdir(parents=True)
    (tmp_path / "protocols" / "second_opinion.py").write_text(
        "from oversight import Episode, Verdict, protocol\n\n"
        "@protocol(roles=('judge',))\n"
        "async def second_opinion(ep: Episode, tries: int = 2) -> Verdict:\n"
        "    for _ in range(tries - 1):\n"
        "        await ep.agent('judge').speak()\n"
        "    return await ep.agent('judge').decide()\n")
    (tmp_path / "prompts" / "second_opinion" / "judge.j2").write_text(
        '{% extends "_base.j2" %}{% block system %}Judge.{% endblock %}'
        '{% block user %}{{ question }} {% include "_verdict_format.j2" %}{% endblock %}')
    spec = MOCK_SPEC.replace('name = "direct"', 'name = "second_opinion"\nparams = { tries = 3 }')
    (tmp_path / "user.toml").write_text(spec)
    out = _run(installed, "run", "user.toml", "--db", "u.db", "--quiet",
               "--protocols", "protocols", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    import sqlite3
    with sqlite3.connect(tmp_path / "u.db") as db:
        n = db.execute("SELECT count(*) FROM messages m JOIN episodes e ON e.id = m.episode_id "
                       "WHERE e.protocol = 'second_opinion'").fetchone()[0]
    assert n == 3  # two speeches and a verdict
