"""Where the loop's walkers and labels run: on Dask (``dask.distributed``), or in this process.

* :class:`DaskTasks` submits every walker or label of a generation as one Dask task and hands
  the results back as they finish. Dask reschedules the tasks of a worker that died (up to its
  ``distributed.scheduler.allowed-failures``); a task that still fails comes back as a failure
  with its reason, never silently dropped.
* :class:`InProcessTasks` runs them one after the other here (``eip-al --workers 0``, and the
  Python API's default).

:func:`open_client` opens the client ``eip-al`` uses: a ``LocalCluster`` on this machine, a
running scheduler (``--scheduler ADDRESS``), or a batch-system cluster of ``dask-jobqueue``
(``--cluster slurm|pbs|sge|lsf``, its job settings read from dask's configuration,
``~/.config/dask/jobqueue.yaml``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

#: ``--cluster`` values: this machine, or a dask-jobqueue cluster class
CLUSTERS = {
    "local": None,
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
}
#: (index of the item, True and the result | False and the reason of the failure)
TaskResult = tuple[int, bool, Any]


class InProcessTasks:
    """Run tasks one after another in this process; an exception propagates."""

    def run(self, fn: Callable, items: Sequence, desc: str) -> Iterator[TaskResult]:
        for i, item in enumerate(tqdm(items, desc=desc, disable=None, leave=False)):
            yield i, True, fn(item)


class DaskTasks:
    """Run tasks on a ``distributed.Client``, yielding results in the order they finish.

    Args:
        client: a connected ``distributed.Client``.
        retries: extra attempts of a task that raised (worker deaths are Dask's own retries).
    """

    def __init__(self, client, retries: int = 1):
        self.client = client
        self.retries = retries

    def run(self, fn: Callable, items: Sequence, desc: str) -> Iterator[TaskResult]:
        from distributed import as_completed

        if not items:
            return
        futures = self.client.map(fn, list(items), pure=False, retries=self.retries)
        position = {future.key: i for i, future in enumerate(futures)}
        bar = tqdm(total=len(futures), desc=desc, disable=None, leave=False)
        try:
            for future in as_completed(futures):
                i = position[future.key]
                if future.status == "finished":
                    yield i, True, future.result()
                else:
                    err = future.exception()
                    yield i, False, f"{type(err).__name__}: {err}".splitlines()[0]
                future.release()
                bar.update(1)
        finally:
            bar.close()
            for future in futures:  # a driver that stops early cancels what is left
                future.cancel()


@contextmanager
def open_client(
    scheduler: str | None = None,
    cluster: str = "local",
    workers: int = 2,
    threads_per_worker: int = 1,
    timeout_s: float = 10.0,
):
    """A ``distributed.Client`` for the loop, closed (with the cluster it started) on exit.

    Args:
        scheduler: address of a running scheduler (``tcp://host:8786``); overrides ``cluster``.
        cluster: a key of :data:`CLUSTERS`.
        workers: local worker processes, or batch jobs of a dask-jobqueue cluster.
        threads_per_worker: threads (and torch/OpenMP threads) of each local worker.
        timeout_s: how long a scheduler may take to answer.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ImportError(
            "parallel walkers and labels run on Dask, which is not installed: "
            'pip install "dask[distributed]", or run in this process with --workers 0'
        ) from err
    if cluster not in CLUSTERS:
        raise ValueError(f"--cluster {cluster!r}: one of {sorted(CLUSTERS)}")
    if workers < 1:
        raise ValueError(f"--workers {workers}: must be >= 1 (0 runs in this process, no Dask)")
    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError, ValueError) as err:
            raise RuntimeError(
                f"--scheduler {scheduler}: no Dask scheduler answered within {timeout_s:g} s "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'timed out'})"
            ) from None
        log.info(
            "Dask scheduler %s: %d worker(s)", scheduler, len(client.scheduler_info()["workers"])
        )
        try:
            yield client
        finally:
            client.close()
        return
    if cluster == "local":
        threads = str(threads_per_worker)
        dask_cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0" if _has_dashboard() else None,
            env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads},
        )
    else:
        dask_cluster = _jobqueue_cluster(cluster, workers)
    try:
        client = Client(dask_cluster)
        if _has_dashboard():
            log.info("Dask dashboard: %s", client.dashboard_link)
        try:
            yield client
        finally:
            client.close()
    finally:
        dask_cluster.close()


def _jobqueue_cluster(cluster: str, jobs: int):
    try:
        import dask_jobqueue
    except ImportError as err:
        raise ImportError(
            f"--cluster {cluster} needs dask-jobqueue, which is not installed: pip install "
            '"eip-plugins[cluster]" (or pip install dask-jobqueue); its job settings (queue, '
            "cores, memory, walltime) are read from ~/.config/dask/jobqueue.yaml"
        ) from err
    try:
        dask_cluster = getattr(dask_jobqueue, CLUSTERS[cluster])()
    except (ValueError, TypeError, KeyError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(
            f"--cluster {cluster}: dask-jobqueue's {CLUSTERS[cluster]} is not configured "
            f"({reason}); "
            f"set jobqueue.{cluster} (cores, memory, queue, walltime) in "
            "~/.config/dask/jobqueue.yaml"
        ) from None
    dask_cluster.scale(jobs=jobs)
    return dask_cluster


def _has_dashboard() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True
