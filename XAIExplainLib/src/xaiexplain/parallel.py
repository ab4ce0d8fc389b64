"""Work spread over processes and machines, the same for every command that goes through a whole
LIDC-IDRI archive: ``--workers N`` (processes on this machine, with a progress bar) and ``--shard K/N``
(the K-th of N parts, for the array jobs of a cluster's scheduler such as Slurm)."""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (1-based) of ``count``: every ``count``-th item of a list in a fixed order, so that
    the parts of the same list are disjoint and together the whole, on any machine."""

    index: int
    count: int

    def take(self, items: Sequence) -> list:
        return list(items[self.index - 1::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``K/N`` with 1 <= K <= N (an argparse type)."""
    index, slash, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count)) if slash else None
    except ValueError:
        shard = None
    if shard is None or not 1 <= shard.index <= shard.count:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shard: give K/N with 1 <= K <= N, e.g. 1/4")
    return shard


def positive_workers(text: str) -> int:
    """A number of worker processes (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of worker processes (1 or more)")
    return value


def _limit_threads(threads: int) -> None:
    """Each worker process its share of the cores, so that N workers do not each start one thread per core."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


# In a worker process: whether it is running an item (a signal then ends the item through its clean-up, such
# as an output set's removal of its staging folder) and whether a signal has already arrived (a second one,
# from the main process after the process group's, must not interrupt that clean-up).
_running_item = False
_signalled = False


def _start_worker(threads: int) -> None:
    _limit_threads(threads)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _worker_signal)


def _worker_signal(signum, frame):
    global _signalled
    if _signalled:
        return
    _signalled = True
    if _running_item:
        from xaiexplain.termination import Terminated

        raise Terminated(signum)
    os._exit(128 + signum)  # idle: nothing to clean up, and no traceback from the pool's loop


def _run_item(function: Callable, item):
    global _running_item
    _running_item = True
    try:
        return function(item)
    finally:
        _running_item = False


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """SIGTERM to the pool's processes: each ends its item through the item's clean-up at once, instead of
    the main process waiting for the items to finish (``_processes`` is the executor's own record)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


def map_in_workers(function: Callable, items: Sequence, workers: int = 1, description: str = "",
                   progress: bool = True, unit: str = "item") -> list:
    """``[function(item) for item in items]``, in ``workers`` processes when more than one, with a progress
    bar on stderr. ``function`` must be a module-level function; its results should be small (the work it
    does is written to files), so that memory stays bounded however many items there are. An interruption
    of the main process (Ctrl-C, SIGTERM) stops the workers at once; a signal to a worker ends its item
    through the item's own clean-up."""
    bar = None
    if progress and items:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=description, unit=unit, file=sys.stderr)
    try:
        if workers <= 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(function(item))
                if bar is not None:
                    bar.update(1)
            return results
        threads = max(1, (os.cpu_count() or 1) // workers)
        # spawn, not fork: a forked copy of a process that has started torch's or OpenMP's threads can hang
        context = multiprocessing.get_context("spawn")
        results = [None] * len(items)
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=context,
                                                    initializer=_start_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_item, function, item): n for n, item in enumerate(items)}
            try:
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future]] = future.result()
                    if bar is not None:
                        bar.update(1)
            except BaseException:
                _stop_workers(pool)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return results
    finally:
        if bar is not None:
            bar.close()
