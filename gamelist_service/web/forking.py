"""serve --workers N: the workers are forked from the main process, which has imported everything once already.

Sanic starts its processes with multiprocessing's 'spawn' unless told otherwise: each worker, and Sanic's own
Manager process, is a new interpreter that imports every module again (about 700) and builds its own copy of
everything: some 57 MB of heap each that no other process shares, and a multiprocessing resource tracker besides
(bench/BASELINE.md). Forked, each starts as a copy-on-write image of the main process, which by then has imported
every module and built the app once (Sanic's AppLoader loads it in the main process too): the pages a worker only
reads stay shared, and it copies only those it writes to.

gc.freeze() just before forking moves every object the collector tracks into its permanent generation, which no
collection visits: a worker's collections (transport/heap.py's first freeze among them) never write to the
inherited objects' headers, which would copy most pages holding them. A worker's full collection (transport/heap.py:
at least every 10 minutes while anything is frozen, and after many disconnects) unfreezes everything and so visits
them once: about 10 MB more become the worker's own (an idle worker: 18 MB of its own, then 28). The main process
keeps its objects frozen: it only supervises, and the garbage it might leave frozen is a few objects of its own.

Threads at fork time. fork() copies only the thread that calls it; a lock another thread held at that moment stays
held in the child for good. The main process may run two threads then: the embedded Redis's supervisor (asleep in
Event.wait nearly always; it polls its Popen and logs) and server.metrics_listen's HTTP server. Neither holds a lock
that a worker takes: logging's handler locks, the import lock and `random`'s state are reinitialised in the child by
CPython (os.register_at_fork), a worker never touches the supervisor's Event or Popen, and prometheus-client's value
lock is only taken by the supervisor right after a restart it counts, which cannot coincide with the start-up fork.
Sanic forks only at start (a worker it restarts would be forked again, with the same threads).

A forked worker then undoes what the main process set up for itself and a spawned worker would not have: the main
process's app in Sanic's registry (the worker builds its own, under the same name, as before) and the main process's
SIGINT and SIGTERM handlers (the worker's event loop installs its own once it runs).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys

from sanic import Sanic
from sanic.exceptions import SanicException

logger = logging.getLogger('gamelist_service.web.forking')


def metrics_in_process_only() -> bool:
    """Whether prometheus-client was imported before serve set PROMETHEUS_MULTIPROC_DIR: its values then live in this
    process's memory, and forked workers would inherit that (spawned ones import it again, after the variable)."""
    values = sys.modules.get('prometheus_client.values')
    return (
        bool(os.environ.get('PROMETHEUS_MULTIPROC_DIR'))
        and values is not None
        and (values.ValueClass is values.MutexValue)
    )


def fork_workers() -> None:
    """In the main process, just before Sanic.serve starts the workers: fork them, from a frozen heap."""
    if metrics_in_process_only():  # web/server.py imports transport/ (and metrics) only after setting it
        logger.warning(
            'prometheus-client was imported before PROMETHEUS_MULTIPROC_DIR was set: the workers are spawned, each '
            'importing everything again, so that their metrics reach /metrics'
        )
        return
    Sanic.start_method = 'fork'
    gc.collect()  # garbage is freed, not frozen
    gc.freeze()


def in_worker() -> None:
    """First thing in a worker process (forked or spawned): start from what a spawned worker starts from."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(SanicException):  # none (spawned), or the main process's one app (forked)
        Sanic.unregister_app(Sanic.get_app())
