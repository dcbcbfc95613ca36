"""Run the API: one uvicorn process, or one per core sharing the port with ``SO_REUSEPORT``.

A single uvicorn process (one Python interpreter) serves at most one core. ``uvicorn
--workers N`` lets N processes ``accept()`` on one shared socket; a burst of new keep-alive
connections then lands on whichever process is awake first (we measured 39/11 for 50
connections over two workers), and the clients of the busier process see its queue.
Here every worker binds its *own* listening socket to the same address with ``SO_REUSEPORT``,
so the kernel spreads connections over the workers by a hash of the client address and port.

The parent only supervises: it forwards SIGTERM/SIGINT to the workers and, if one of them
dies, stops the others and exits non-zero so that the service manager restarts the whole set
(a worker's state is only its connection pool and its SSE broadcaster; nothing is lost).

Metrics of several workers (:mod:`core.telemetry`): before the workers start, the parent makes a
private temporary directory and sets ``PROMETHEUS_MULTIPROC_DIR`` to it for them (prometheus_client
reads it when a worker imports it); each worker writes its values there, so ``GET
/prometheus/metrics`` answered by any worker exposes all of them merged. When a worker exits the
parent marks it dead (its live gauges, the SSE clients, leave the sum); the directory is removed
at the end. One worker: the process's own registry, no directory.

Logs (:func:`log_config`): uvicorn's error and access logs, and the app's own loggers, in
``text`` or ``json`` (``EVENTOPS_LOG_FORMAT``), with API keys in query strings redacted
(:class:`core.logs.RedactSecrets` on every handler).
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import ConfigError
from core.logs import TEXT_FORMAT, check_format
from core.telemetry import MULTIPROC_ENV

log = logging.getLogger("eventops.api")

__all__ = ["ServeOptions", "bind", "bind_or_explain", "log_config", "serve"]


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    log_format: str = "text"
    access_log: bool = True
    timeout_keep_alive: int = 5
    backlog: int = 2048


def bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket for ``host:port`` (``SO_REUSEPORT`` when several workers share it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def bind_or_explain(
    host: str,
    port: int,
    reuse_port: bool = False,
    choose: str = "--port or EVENTOPS_API_PORT",
    host_choose: str = "--host or EVENTOPS_API_HOST",
) -> socket.socket:
    """:func:`bind`, raising :class:`~core.errors.ConfigError` with the fix when the address
    cannot be used (port taken, privileged port, address not on this machine); ``choose`` says
    how to set another port."""
    try:
        return bind(host, port, reuse_port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            why = (
                f"port {port} on {host} is already in use — stop what listens there or choose "
                f"another port with {choose}"
            )
        elif e.errno == errno.EACCES:
            why = (
                f"no permission to listen on {host}:{port} — choose a port above 1023 with {choose}"
            )
        else:
            why = (
                f"cannot listen on {host}:{port} ({e.strerror or e}) — set {host_choose} "
                "to an address of this machine"
            )
        raise ConfigError(why) from e


def log_config(fmt: str = "text", level: str = "info") -> dict[str, Any]:
    """uvicorn's ``log_config``: its error and access loggers and the root logger (the app's
    own loggers) in ``fmt``, each handler redacting secrets (``?key=`` …).

    >>> c = log_config("json")
    >>> c["formatters"]["access"]["()"], c["handlers"]["access"]["filters"]
    ('core.logs.JsonFormatter', ['redact'])
    """
    if check_format(fmt) == "json":
        formatters: dict[str, dict[str, Any]] = {
            name: {"()": "core.logs.JsonFormatter"} for name in ("default", "access", "plain")
        }
    else:  # uvicorn's own text formats, and the CLI's for the app's loggers
        formatters = {
            "default": {
                "()": "uvicorn.logging.DefaultFormatter",
                "fmt": "%(levelprefix)s %(message)s",
                "use_colors": None,
            },
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
            },
            "plain": {"format": TEXT_FORMAT},
        }

    def handler(formatter: str, stream: str) -> dict[str, Any]:
        return {
            "formatter": formatter,
            "class": "logging.StreamHandler",
            "stream": stream,
            "filters": ["redact"],
        }

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "core.logs.RedactSecrets"}},
        "formatters": formatters,
        "handlers": {
            "default": handler("default", "ext://sys.stderr"),
            "access": handler("access", "ext://sys.stdout"),
            "plain": handler("plain", "ext://sys.stderr"),
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["plain"], "level": level.upper()},
    }


def _run_one(opts: dict, reuse_port: bool, sock: socket.socket | None = None) -> None:
    import uvicorn

    o = ServeOptions(**opts)
    config = uvicorn.Config(
        "serving.app:create_app",
        factory=True,
        log_config=log_config(o.log_format, o.log_level),
        log_level=o.log_level,
        access_log=o.access_log,
        timeout_keep_alive=o.timeout_keep_alive,
        backlog=o.backlog,
    )
    sock = sock or bind(o.host, o.port, reuse_port)
    uvicorn.Server(config).run(sockets=[sock])


def serve(opts: ServeOptions) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit status.

    The address is bound before anything else is imported or started, so a taken port is a
    one-line :class:`~core.errors.ConfigError` at once.
    """
    check_format(opts.log_format)
    if opts.workers <= 1:
        _run_one(asdict(opts), reuse_port=False, sock=bind_or_explain(opts.host, opts.port))
        return 0
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux has it
        raise ConfigError(
            "several API workers need SO_REUSEPORT (Linux, BSD, macOS): use --workers 1"
        )
    bind_or_explain(opts.host, opts.port, reuse_port=True).close()  # fail here, once, if taken
    # the workers' metrics: a fresh private directory, set before they import prometheus_client
    metrics_dir = tempfile.mkdtemp(prefix="eventops-metrics-")
    old_dir = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        return _supervise(opts, metrics_dir)
    finally:
        if old_dir is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = old_dir
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _mark_dead(pid: int | None, metrics_dir: str) -> None:
    """A worker exited: its live gauges (SSE clients …) leave the merged values."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)


def _supervise(opts: ServeOptions, metrics_dir: str) -> int:
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_run_one, args=(asdict(opts), True), name=f"api-{i}", daemon=False)
        for i in range(opts.workers)
    ]
    stopping = crashed = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: uvicorn finishes its requests and closes its pool

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        log.info("API on %s:%d, %d workers (SO_REUSEPORT)", opts.host, opts.port, opts.workers)
        while not stopping and all(p.is_alive() for p in procs):
            time.sleep(0.2)
        if not stopping:
            crashed = True
            dead = [p.name for p in procs if not p.is_alive()]
            log.error("API worker(s) %s exited; stopping the others", ", ".join(dead))
            stop()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
            _mark_dead(p.pid, metrics_dir)
        return 1 if crashed else 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(ServeOptions()))
