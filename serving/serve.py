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
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass

from core.errors import ConfigError

log = logging.getLogger("eventops.api")

__all__ = ["ServeOptions", "bind", "bind_or_explain", "serve"]


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
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


def _run_one(opts: dict, reuse_port: bool, sock: socket.socket | None = None) -> None:
    import uvicorn

    o = ServeOptions(**opts)
    config = uvicorn.Config(
        "serving.app:create_app",
        factory=True,
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
    if opts.workers <= 1:
        _run_one(asdict(opts), reuse_port=False, sock=bind_or_explain(opts.host, opts.port))
        return 0
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Linux has it
        raise ConfigError(
            "several API workers need SO_REUSEPORT (Linux, BSD, macOS): use --workers 1"
        )
    bind_or_explain(opts.host, opts.port, reuse_port=True).close()  # fail here, once, if taken
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
        return 1 if crashed else 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(ServeOptions()))
