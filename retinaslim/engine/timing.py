"""Latency of calls, timed with torch.utils.benchmark; calls compared side by side take turns in rounds.

A sample is one call, timed with ``torch.utils.benchmark.timer`` (the clock ``Timer`` uses: it waits for an
accelerator's queued work before reading the time), and a call's samples form one
``torch.utils.benchmark.Measurement``: its ``median`` (seconds) is the latency the commands report in ms,
``p90_ms`` the 90th percentile eval adds. The commands promise a number of runs (``--runs``,
``--latency-runs``) and of warm-up calls, so the samples are taken here rather than by
``Timer.blocked_autorange`` (which times blocks of calls for a time budget) or ``Timer.timeit`` (two untimed
calls before every timed one: three times the cost of timing a teacher).

The rounds are ours for a measured reason: on 2 cores, calls timed one after another drifted by +-1.5 ms,
the slow spell falling on whichever ran last; visiting every call in turn spreads it over all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import logging

import numpy as np
import torch

# torch.utils.benchmark imports cpp_extension, which logs "No CUDA runtime is found" on CPU-only machines.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402

Key = TypeVar("Key", bound=Hashable)


def measure(calls: dict[Key, Callable[[], object]], runs: int, warmup: int,
            rounds: int = 3) -> dict[Key, benchmark.Measurement]:
    """``runs`` timed calls of each of ``calls``, in ``rounds`` rounds that visit every call in turn, each visit
    starting with ``warmup`` untimed calls; one ``Measurement`` per call (times in seconds, one call per sample)."""
    rounds = max(1, min(rounds, runs))
    samples: dict[Key, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for r in range(rounds):
            for name, call in calls.items():
                for _ in range(warmup):
                    call()
                for _ in range(runs // rounds + (r < runs % rounds)):
                    start = benchmark.timer()
                    call()
                    samples[name].append(benchmark.timer() - start)
    threads = torch.get_num_threads()
    return {name: benchmark.Measurement(1, times, benchmark.TaskSpec(str(name), "", num_threads=threads))
            for name, times in samples.items()}


def median_ms(measurement: benchmark.Measurement) -> float:
    return measurement.median * 1000


def p90_ms(measurement: benchmark.Measurement) -> float:
    return float(np.percentile(measurement.times, 90)) * 1000
