"""Logging setup: one call from main().

In the initramfs (``kmsg=True``) lines go to /dev/kmsg with ``<N>host-recover:`` priority
prefixes (and stderr, which is the console, unless quiet). On a terminal a plain
coloured formatter is used. Under systemd, when stderr is the journal (``JOURNAL_STREAM``
names it), every line starts with its syslog priority ``<N>`` (journald's
``SyslogLevelPrefix=``, on by default): errors land at ``err``, warnings at ``warning``.
Never log secrets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

_KMSG_PRIO = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class KmsgHandler(logging.Handler):
    """Lines to the kernel log. The kernel rate-limits /dev/kmsg writers per open file
    (10 lines per 5 s: "N output lines suppressed"), so every record opens it anew: no
    line of a boot is lost."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        super().__init__()
        self.path = path
        os.close(os.open(path, os.O_WRONLY | os.O_CLOEXEC))  # fail now, not per line

    def emit(self, record: logging.LogRecord) -> None:
        prio = _KMSG_PRIO.get(record.levelno, 6)
        try:
            for line in self.format(record).splitlines():
                fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, f"<{prio}>host-recover: {line}\n".encode()[:1000])
                finally:
                    os.close(fd)
        except OSError:
            pass


def journal_stream(stream: Any) -> bool:
    """Whether ``stream`` is the journal: systemd sets ``JOURNAL_STREAM=DEV:INODE`` of the
    stdout/stderr it connected to journald (a redirect or a pipe keeps the variable but
    not the inode, so plain lines go there)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


class _PriorityFormatter(logging.Formatter):
    """``<N>`` (syslog priority) before every line, for journald's SyslogLevelPrefix."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _KMSG_PRIO.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (not at setup)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _TtyFormatter(logging.Formatter):
    COLOURS = {logging.ERROR: "\033[31m", logging.WARNING: "\033[33m", logging.DEBUG: "\033[2m"}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = self.COLOURS.get(record.levelno)
        return f"{colour}{text}\033[0m" if colour else text


def setup(debug: bool = False, kmsg: bool = False, quiet: bool = False) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    level = logging.DEBUG if debug else logging.INFO
    env = os.environ.get("SYSTEMD_LOG_LEVEL", "").lower()
    if env == "debug":
        level = logging.DEBUG
    root.setLevel(level)
    if kmsg:
        try:
            kh = KmsgHandler()
            kh.setFormatter(logging.Formatter("%(message)s"))
            root.addHandler(kh)
        except OSError:
            kmsg = False
    if not quiet or not kmsg:
        sh = _StderrHandler()
        fmt = "host-recover: %(message)s" if not debug else "host-recover: %(name)s: %(message)s"
        if journal_stream(sys.stderr):
            sh.setFormatter(_PriorityFormatter(fmt))
        elif sys.stderr.isatty():
            sh.setFormatter(_TtyFormatter(fmt))
        else:
            sh.setFormatter(logging.Formatter(fmt))
        root.addHandler(sh)
    # libtss2 prints WARNING:esys on every TPM error; we translate errors ourselves.
    os.environ.setdefault("TSS2_LOG", "all+none")


@contextlib.contextmanager
def step(name: str, timeline: dict[str, float] | None = None) -> Iterator[None]:
    """Time a named step; log its duration under debug and record it in ``timeline``."""
    log = logging.getLogger("recover.step")
    t0 = time.monotonic()
    log.debug("%s ...", name)
    try:
        yield
    finally:
        dt = time.monotonic() - t0
        if timeline is not None:
            timeline[name] = round(dt * 1000, 1)
        log.debug("%s done in %.1f ms", name, dt * 1000)
