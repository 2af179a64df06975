"""Wall-clock timing shared by the benchmark scripts."""

import statistics
import time


def timed_runs(fn, runs, warmup):
    """Calls `fn()` `warmup` times untimed, then `runs` times; returns the seconds of each.

    >>> times = timed_runs(lambda: None, runs=3, warmup=1)
    >>> len(times), all(t >= 0 for t in times)
    (3, True)
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, runs, warmup):
    """The median of `timed_runs(fn, runs, warmup)`."""
    return statistics.median(timed_runs(fn, runs, warmup))
