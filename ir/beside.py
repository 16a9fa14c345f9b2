"""Work done beside the rest: in a forked copy of this process, on a second core.

Reading a large program is Python from end to end (the 70B's report: a million ops parsed, checked,
described, analysed and packed), and Python runs on one core. Some of that work gives back little: the
verifier's verdict, a chip's packed page chunk. A forked copy of the process has all it needs without
copying anything up front and hands its results back through a pipe, pickled. The two share their pages
until one writes one, which is then copied: a fault for each page either process writes, and Python
writes every object it reads (its reference count). So a copy working on millions of objects made before
the fork slows this process working on them too (the 70B's description: 9.9 s, 8.0 s alone); a copy made
before them, making its own (the verifier's, reading the program for itself), does not.

What it gives is what the same calls give here, so nothing depends on whether they ran beside: where a
process cannot fork safely (not Linux, or other threads running), or the copy fails in any way but an
lpuc error (killed, out of memory, a bug), the work runs here, and fails as it would have.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from .errors import LpucError

T = TypeVar("T")
R = TypeVar("R")

FORK = sys.platform == "linux" and hasattr(os, "fork")  # (macOS forks unsafely once system libraries run)


class Beside(Generic[T]):
    """`work()` started in a forked copy of this process (else run here when its result is first asked for);
    result() waits for it and gives what it returned (or raises the LpucError it raised). As a context manager:
    a copy whose result is not asked for is stopped on leaving."""

    def __init__(self, work: Callable[[], T]):
        self._work = work
        self._outcome: tuple[bool, object] | None = None
        self._copy = _Copy.start(lambda send: send(work()))

    def result(self) -> T:
        if self._outcome is None:
            if self._copy is not None:
                self._outcome = self._copy.next_outcome()
                self._stop()
            self._outcome = self._outcome or _outcome(self._work)
        return _given(self._outcome)

    def __enter__(self) -> Beside[T]:
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._copy is not None:
            self._copy.stop()
            self._copy = None


def alternately(work: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
    """work(item) for each of `items`, in order: every second one (items[1], items[3], ...) in a forked copy
    of this process while this one does the others. The consumer may stop early (close the iterator: the
    copy is stopped)."""
    copy = _Copy.start(lambda send: [send(work(item)) for item in items[1::2]]) if len(items) > 1 else None
    try:
        for k, item in enumerate(items):
            if k % 2 == 0 or copy is None:
                yield work(item)
                continue
            outcome = copy.next_outcome()
            if outcome is None:  # (the copy failed): the rest here
                copy.stop()
                copy = None
                outcome = _outcome(lambda: work(item))
            yield _given(outcome)
    finally:
        if copy is not None:
            copy.stop()


def _outcome(work: Callable[[], T]) -> tuple[bool, T | LpucError]:
    try:
        return True, work()
    except LpucError as e:
        return False, e


def _given(outcome: tuple[bool, T | LpucError]) -> T:
    ok, value = outcome
    if not ok:
        raise value
    return value


_LENGTH = struct.Struct("<Q")  # each outcome in the pipe: its length, then its pickle


class _Copy:
    """A forked copy of this process sending outcomes (ok, result or LpucError) through a pipe."""

    def __init__(self, pid: int, pipe: int):
        self.pid, self.pipe = pid, os.fdopen(pipe, "rb")

    @classmethod
    def start(cls, run: Callable[[Callable[[object], None]], object]) -> _Copy | None:
        """A copy calling run(send): send(result) sends an outcome; an LpucError is sent as one and ends it.
        None where this process cannot fork safely."""
        if not FORK or threading.active_count() > 1:  # (a fork copies one thread: another's locks stay held)
            return None
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the copy: never returns
            os.close(read)
            _serve(run, write)
        os.close(write)
        return cls(pid, read)

    def next_outcome(self) -> tuple[bool, object] | None:
        """The next outcome sent; None when the copy sent no more (it ended or failed)."""
        try:
            head = self.pipe.read(_LENGTH.size)
            if len(head) < _LENGTH.size:
                return None
            (n,) = _LENGTH.unpack(head)
            data = self.pipe.read(n)
            return pickle.loads(data) if len(data) == n else None
        except Exception:  # (anything unreadable: the work is done here)
            return None

    def stop(self) -> None:
        """Stop the copy (when it is not done) and reap it."""
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.pipe.close()


def _serve(run: Callable, pipe: int) -> None:
    """In the copy: run(send), each outcome pickled into `pipe`; an exception but an LpucError sends nothing
    more (the parent does that work itself, and fails as it would). Exits without cleaning up: what the copy
    shares with its parent (buffered output, temporary files, the parent's exit handlers) is the parent's."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # (Ctrl-C stops the parent, which stops the copy)
        out = os.fdopen(pipe, "wb")

        def put(outcome: tuple[bool, object]) -> None:
            data = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
            out.write(_LENGTH.pack(len(data)) + data)
            out.flush()

        try:
            run(lambda result: put((True, result)))
        except LpucError as e:
            put((False, e))
    finally:
        os._exit(0)
