"""Process tuning shared by the batch runner, the report and the exports."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def quiet_gc():
    """Run the cyclic garbage collector rarely for the duration: freeze what exists (it lives
    until exit anyway) and collect the youngest generation every 50,000 allocations instead
    of 700. With the default thresholds a 2,000-call batch ran ~850 collections, each walking
    the ~1,000 classes the SDKs define (~15% of its CPU; ~4% after), and an export of millions
    of tuples spent ~12% of its CPU in them (bench/RESULTS.md). Cycles are still collected,
    only less often."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


@contextlib.contextmanager
def paused_gc(freeze: bool = True):
    """No cyclic collection for the duration, then (`freeze`) freeze what exists: for start-up
    imports, which make long-lived objects and next to no garbage, yet trigger full passes over
    them (~15% of `import openai`). The freeze spares the next collections that walk; quiet_gc
    unfreezes at the batch's end (bench/RESULTS.md, session 5b). Without `freeze`: for work
    that builds many objects and no cycles (a report's columns: ~12% of its CPU otherwise)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was:
            gc.enable()


class InChild(Generic[T]):
    """`work()` started in a forked child process, its result pickled back through a pipe:
    for independent CPU-bound parts of one command on a machine with a second core (the
    report's detection next to its other sections). `result()` waits for it.

    The child is not used where a fork is not safe or not there: not Linux, or other threads
    running (a fork copies one thread, with whatever locks the others held), or the fork
    itself fails (no process or file descriptor to spare). Then, and
    whenever the child fails (an exception, a signal, a result that does not unpickle),
    `result()` runs `here()` (default: `work`) in this process: the figures and the errors
    are the same as without a child. `work` must not use this process's connections (open its
    own; `here` may). The child leaves by `os._exit`: no atexit handlers, no flush of this
    process's buffers."""

    def __init__(self, work: Callable[[], T], *, here: Callable[[], T] | None = None,
                 fork: bool = True):
        self.work = here or work
        self.pid: int | None = None
        if not (fork and self.possible()):
            return
        try:
            read_fd, write_fd = os.pipe()
        except OSError:  # out of file descriptors: done here
            return
        try:
            pid = os.fork()
        except OSError:  # no process to spare (EAGAIN, ENOMEM): done here
            os.close(read_fd)
            os.close(write_fd)
            return
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            status = 1
            try:
                data = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(data)
                status = 0
            except BaseException:  # noqa: BLE001 - the parent does the work again and raises
                pass
            finally:
                os._exit(status)
        os.close(write_fd)
        self.pid, self._pipe = pid, os.fdopen(read_fd, "rb")

    @staticmethod
    def possible() -> bool:
        """Whether a child would be forked now (else the work is done in this process): on
        Linux (macOS system libraries are not safe across a fork), with no other thread."""
        return sys.platform.startswith("linux") and threading.active_count() == 1

    def result(self) -> T:
        """The child's result, or `work()` done here (see the class)."""
        if self.pid is None:
            return self.work()
        try:
            data = self._pipe.read()
        except BaseException:  # interrupted: the child is not waited for
            self.cancel()
            raise
        self._reap()
        if self._status in (0, None) and data:  # (a truncated pickle does not load)
            try:
                return pickle.loads(data)
            except Exception:  # noqa: BLE001 - done again here
                pass
        return self.work()

    def cancel(self) -> None:
        """Stop the child if it still runs (when its result will not be asked for)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()

    def _reap(self) -> None:
        pid, self.pid = self.pid, None
        self._pipe.close()
        try:
            self._status: int | None = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:  # reaped already (SIGCHLD ignored): its status is unknown
            self._status = None
