"""A real PostgreSQL server for the tests, started by the tests themselves (no docker, no
service): Debian's `postgresql` package provides `initdb` and `pg_ctl`
(/usr/lib/postgresql/<version>/bin). A throw-away cluster is created in a temporary folder
and listens on a unix socket in that folder only (no TCP port, so it never meets another
server on this machine); fsync is off, it holds nothing worth keeping.

Not a test module (no `test_` prefix). The session fixture is in conftest_pg.py.

Missing binaries fail the tests loudly, never skip them: as root they are installed
(`apt-get install -y postgresql`), otherwise the error says what to install. initdb refuses to
run as root, so as root the cluster belongs to the `postgres` system user (the package
creates it) and its commands run through `runuser -u postgres --`.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from debian import PackageMissing, ensure

SUPERUSER = "postgres"  # the cluster's superuser; local connections are trusted
TIMEOUT = 120.0


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started for the tests (the message says why)."""


def _version(bindir: str) -> tuple[int, ...]:
    found = re.search(r"/postgresql/([\d.]+)/bin", bindir)
    return tuple(int(p) for p in found.group(1).split(".")) if found else (0,)


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin with initdb and pg_ctl, else initdb on PATH."""
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if os.access(f"{bindir}/initdb", os.X_OK) and os.access(f"{bindir}/pg_ctl", os.X_OK):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl", path=str(Path(initdb).parent)):
        return Path(initdb).parent
    return None


def ensure_bindir() -> Path:
    """The server binaries, installed with apt-get when missing and running as root."""
    try:
        return ensure("postgresql", find_bindir, "the PostgreSQL tests need a real server "
                      "(initdb and pg_ctl, looked for in /usr/lib/postgresql/*/bin and PATH)")
    except PackageMissing as exc:
        raise PostgresUnavailable(str(exc)) from None


class PostgresServer:
    """A throw-away cluster on a unix socket in a temporary folder; `stop()` removes it."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root: Path | None = None
        self.as_user: list[str] = []  # the command prefix that runs as the cluster's owner
        self._names = itertools.count(1)
        self.started_in: float | None = None  # seconds initdb + start took

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> PostgresServer:
        t0 = time.monotonic()
        # The socket's path must stay short (~100 bytes) and, as root, be reachable by the
        # `postgres` user: /tmp rather than a long or private $TMPDIR.
        short = os.geteuid() == 0 or len(tempfile.gettempdir()) > 60
        self.root = Path(tempfile.mkdtemp(prefix="oversight-pg-",
                                          dir="/tmp" if short and os.path.isdir("/tmp") else None))
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to `postgres`
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, the test server must run as another user and there is no "
                    "`postgres` system user (Debian's postgresql package creates it)") from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync", "--no-instructions")
        options = " ".join([
            f"-k {self.root}", "-c listen_addresses=''",  # unix socket only: no port to clash
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=300", "-c shared_buffers=32MB"])
        try:
            self._run("pg_ctl", "-D", str(data), "-l", str(self.log), "-w", "-t", "60",
                      "-o", options, "start")
        except PostgresUnavailable as exc:
            raise PostgresUnavailable(f"{exc}\nserver log:\n{self.log_tail()}") from None
        self.started_in = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                # immediate: nothing here is worth a shutdown checkpoint
                self._run("pg_ctl", "-D", str(self.root / "data"), "-w", "-t", "60",
                          "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"

    def _run(self, tool: str, *args: str) -> str:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                                  cwd=self.root)
        except subprocess.TimeoutExpired:
            raise PostgresUnavailable(f"{tool} took more than {TIMEOUT:.0f} s") from None
        if done.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(cmd)} failed (exit {done.returncode}):\n"
                                      f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done.stdout

    # -- databases ----------------------------------------------------------------------
    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """A SQLAlchemy URL for a database of this server (over its unix socket)."""
        return f"postgresql+{driver}://{SUPERUSER}@/{database}?host={self.root}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host={self.root} user={SUPERUSER} dbname={database}"

    def create_database(self, hint: str = "t") -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t{next(self._names)}_" + re.sub(r"[^a-z0-9_]+", "_", hint.lower())
        name = name[:63].rstrip("_")
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
