"""Scale-out for ingest: per-video tasks on a Dask cluster (``dask.distributed``).

``DaskRunner`` connects to a running scheduler (``tcp://HOST:PORT`` or a scheduler JSON file, as
written by ``dask scheduler --scheduler-file`` or dask-jobqueue) or starts a local cluster of
worker processes, and runs ``ingest.run_video_task`` there. The driver keeps everything that
must happen once: it journals each outcome as it arrives and assembles the manifests at the end,
exactly as in a local run.

Robustness:

* At most a window of tasks (a few per worker thread) is in flight, topped up as results come
  back through ``as_completed``: millions of videos never flood the scheduler.
* A worker that dies mid-task (killed, OOM, node lost) loses nothing: the scheduler reruns its
  tasks elsewhere. A task that keeps killing workers (Dask's ``KilledWorker``) becomes a failed
  row, as a crashing decoder does locally; ``retry_failed`` retries it on the next run. The
  half-written frames of a killed task lie in ``OUTDIR/.partial`` and are never published.
* Cancelled futures (a scheduler restart) are resubmitted; a lost scheduler stops the run with
  a clear error, and the rerun resumes from the journal.
* Every worker must see OUTDIR (a shared filesystem); a worker that does not is named up front.
* Decoder threads are chosen on the worker, from its machine's cores and the worker threads
  that share them, never from the driver's core count.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

CONNECT_TIMEOUT_S = 30.0   # reaching the scheduler
WORKERS_TIMEOUT_S = 120.0  # waiting for a first worker to join
TASKS_PER_THREAD = 4       # in-flight window: enough to hide scheduling latency
MAX_RESUBMITS = 3          # per task, after cancellations (scheduler restarts)


class DaskRunner:
    """Runs ingest's ``VideoTask``s on a Dask cluster; a context manager.

    ``scheduler``: an address (``tcp://HOST:PORT``), the path of a scheduler file, an existing
    ``distributed.Client`` (used as is, not closed), or None to start a ``LocalCluster`` of
    ``workers`` single-threaded worker processes on loopback (closed at the end). ``outdir``
    must be visible to every worker under the same path.
    """

    def __init__(self, scheduler=None, *, workers: int = 1, outdir: str | os.PathLike):
        self.scheduler, self.workers, self.outdir = scheduler, workers, str(outdir)
        self.client = self.cluster = None
        self._own_client = False

    def __enter__(self) -> "DaskRunner":
        try:
            self._connect()
            self._check_workers()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self) -> None:
        from distributed import Client, LocalCluster

        if self.scheduler is None:
            self.cluster = LocalCluster(**local_cluster_options(self.workers))
            self.client, self._own_client = Client(self.cluster), True
        elif isinstance(self.scheduler, Client):
            self.client = self.scheduler
        else:
            self.client, self._own_client = _client_for(str(self.scheduler)), True

    def _check_workers(self) -> None:
        try:
            self.client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"the Dask cluster at {describe(self.scheduler)} has no workers "
                               f"(waited {WORKERS_TIMEOUT_S:g}s); start some with "
                               "`dask worker ADDRESS`") from None
        blind = sorted(w for w, ok in self.client.run(os.path.isdir, self.outdir).items() if not ok)
        if blind:
            raise RuntimeError(f"Dask worker(s) {', '.join(blind)} cannot see the output folder "
                               f"{self.outdir}: workers need a filesystem shared with the driver, "
                               "mounted at the same path")

    def close(self) -> None:
        """Close what this runner opened (a shared cluster and its workers stay up; their
        idle sandbox children are reused by the next run and exit with their worker)."""
        if self.client is not None and self._own_client:
            with contextlib.suppress(Exception):
                self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()
        self.client = self.cluster = None

    def threads_per_host(self) -> dict[str, int]:
        """Worker threads per machine (the decoders of one machine share its cores)."""
        totals: dict[str, int] = {}
        for address, info in self.client.scheduler_info(n_workers=-1)["workers"].items():
            host = info.get("host") or _host(address)
            totals[host] = totals.get(host, 0) + int(info.get("nthreads") or 1)
        return totals

    def map(self, tasks: Iterable) -> Iterator[dict]:
        """Journal entries of ``tasks`` (``VideoTask``), in completion order, one per task.

        A ``StorageError`` on a worker (its disk is full...) is raised here: the run stops.
        """
        from distributed import as_completed

        tasks = iter(tasks)
        hosts = self.threads_per_host()
        window = max(8, TASKS_PER_THREAD * sum(hosts.values()))
        pending: dict[str, tuple] = {}
        running = as_completed()

        def submit(task, attempt: int = 0) -> None:
            key = f"vidfeat-{task.phase}-{uuid.uuid4().hex}"
            future = self.client.submit(run_on_worker, task, hosts, key=key, pure=False)
            pending[future.key] = (task, attempt)
            running.add(future)

        for task in islice(tasks, window):
            submit(task)
        for future in running:
            task, attempt = pending.pop(future.key)
            entry = self._outcome(future, task, attempt, submit)
            if entry is None:
                continue  # resubmitted
            yield entry
            for task in islice(tasks, 1):
                submit(task)

    def _outcome(self, future, task, attempt: int, submit) -> dict | None:
        """The task's entry; None when it was resubmitted after a cancellation."""
        from distributed.scheduler import KilledWorker

        from vidfeat.files import StorageError

        try:
            return future.result()
        except KilledWorker as exc:  # Dask already reran it on other workers, which died too
            return failed_entry(task, f"worker process died while processing this video "
                                      f"(every retry; {type(exc).__name__})")
        except Exception as exc:
            if _is_cancelled(exc):
                if attempt >= MAX_RESUBMITS or self.client.status not in ("running", "connecting"):
                    raise RuntimeError(f"lost the Dask scheduler at {describe(self.scheduler)} "
                                       f"({type(exc).__name__}); rerun to resume") from exc
                submit(task, attempt + 1)
                return None
            if isinstance(exc, StorageError):  # a worker's disk failed, not the video
                raise
            # run_video_task never raises; this is an error around it (e.g. unpicklable work)
            return failed_entry(task, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        finally:
            future.release()


def local_cluster_options(workers: int) -> dict:
    """``LocalCluster`` keywords: ``workers`` one-thread processes on loopback, no dashboard
    (its HTTP endpoint on a free port, so concurrent runs never compete for 8787)."""
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None,
            "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}}


def _is_cancelled(exc: BaseException) -> bool:
    from asyncio import CancelledError as AsyncCancelled
    from concurrent.futures import CancelledError

    return isinstance(exc, (CancelledError, AsyncCancelled)) or \
        type(exc).__name__ in ("CancelledError", "FutureCancelledError")


def failed_entry(task, error: str) -> dict:
    """A journal entry for ``task`` failed with ``error`` (the shape of ``run_video_task``'s)."""
    return {"phase": task.phase, "video_id": task.video_id, "key": task.key, "status": "failed",
            "error": error, "elapsed_s": 0.0}


def _client_for(scheduler: str):
    from distributed import Client

    if "://" not in scheduler and Path(scheduler).is_file():
        kwargs = {"scheduler_file": scheduler}
    elif "://" in scheduler or ":" in scheduler:
        kwargs = {"address": scheduler}
    else:
        raise ValueError(f"scheduler={scheduler!r} is neither an address (tcp://HOST:PORT) nor "
                         "an existing scheduler file")
    try:
        return Client(**kwargs, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise RuntimeError(f"cannot reach the Dask scheduler at {scheduler} "
                           f"({' '.join(str(exc).split()) or type(exc).__name__})") from None


def describe(scheduler) -> str | None:
    """``scheduler`` as text for messages and ``ingest.json`` (a Client by its address)."""
    if scheduler is None or isinstance(scheduler, (str, os.PathLike)):
        return None if scheduler is None else os.fspath(scheduler)
    return getattr(getattr(scheduler, "scheduler", None), "address", None) or repr(scheduler)


def _host(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


# --------------------------------------------------------------------------------- on workers
def run_on_worker(task, threads_per_host: dict[str, int]) -> dict:
    """``run_video_task`` on a Dask worker, with decoder threads sized for this machine."""
    from dataclasses import replace

    from vidfeat.ingestion.tasks import run_video_task

    if task.phase == "decode" and task.threads is None:
        task = replace(task, threads=worker_decode_threads(threads_per_host))
    return run_video_task(task)


def worker_decode_threads(threads_per_host: dict[str, int]) -> int:
    """This machine's usable cores shared among the worker threads running on it."""
    from distributed import get_worker

    from vidfeat.system import decode_threads

    try:
        worker = get_worker()
        sharing = threads_per_host.get(_host(worker.address)) or worker.state.nthreads
    except ValueError:  # not on a worker (direct call)
        sharing = 1
    return decode_threads(sharing)
