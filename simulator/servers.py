"""Replicas the simulator runs: slot servers (host ops, tools, search, embed) and vLLM-style LLM engines.

The model they implement is stated in simulator/core.py. Each replica keeps its own statistics:
busy time, the time-integral of its queue length, waits and completed calls.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A task: (run, op index). The core reads the run's drawn sizes through ``sizes``.
Task = tuple[Any, int]
SEGMENT_STEPS = 32  # most decode steps one event covers: their mean context moves by ±16 tokens, half the grid
MIN_LEFT_SHARE = 0.05  # of a core pool, left to the plan's ops however much the runtime's own work demands
# The event heap: (time, tie-breaking counter, callback, argument); callback(argument, time).
Event = tuple[float, int, Callable[[Any, float], None], Any]


@dataclass
class StepTimes:
    """Seconds of one engine step at (sequences, tokens) from a cost function, memoised on a token grid."""

    raw: Callable[[int, float], float]
    grid: float
    cache: dict[tuple[int, int], float] = field(default_factory=dict)

    def __call__(self, n: int, tokens: float) -> float:
        key = (n, int(tokens / self.grid + 0.5))
        v = self.cache.get(key)
        if v is None:
            v = self.cache[key] = self.raw(n, max(1.0, key[1] * self.grid))
        return v


@dataclass
class CorePool:
    """The cores of one CPU device type in the plan, time-shared by every host task and CPU engine step on it,
    and by the runtime's own work there (``charge``: the daemon's per run, an engine front-end's per token).

    The runtime's work is a background demand in cores, each charge spread over the next ``tau_s`` seconds
    (an exponentially weighted rate: D(t) = Σ_i c_i·exp(−(t − t_i)/τ)/τ), served first: the daemon runs at
    nice 0 and Ray's workers at nice 15 (Ray's default worker niceness), so the plan's ops get what is left.
    A service starting at t is stretched by (cores held) ÷ (capacity · (1 − s(t)) − D(t)) when that exceeds 1
    (processor sharing at its start); what is left is floored at MIN_LEFT_SHARE of the capacity. s(t) is the share
    of the cores the host took (a VM's hypervisor steal, measured: ``steal``), 0 without a measurement. With
    ``steal_model`` "gang" (the default) a service of c cores is instead stretched by the sharing without s,
    × (1 − s)^−⌈c⌉ (its threads meet at barriers, so it waits for whichever vCPU the host has descheduled);
    "proportional" only shrinks the pool by s."""

    capacity: float  # cores × sockets allocated
    in_use: float = 0.0
    tau_s: float = 1.0
    background_cores: float = 0.0  # D at background_t
    background_t: float = 0.0
    charged_s: float = 0.0  # Σ core-seconds charged
    # the host's share s(t) as samples (t_k, s_k), t_k ascending: s_k holds over (t_{k-1}, t_k]; 0 after the last
    steal: tuple[tuple[float, float], ...] = ()
    steal_model: str = "gang"  # or "proportional": see the class docstring

    def stolen(self, now: float) -> float:
        """s(now): the share of the pool's cores the host took at ``now``."""
        if not self.steal:
            return 0.0
        k = bisect.bisect_left(self.steal, (now, -math.inf))
        return self.steal[k][1] if k < len(self.steal) else 0.0

    def charge(self, cpu_s: float, now: float) -> None:
        """``cpu_s`` core-seconds of the runtime's own work, done from ``now`` on."""
        self.background_cores = self.background(now) + cpu_s / self.tau_s
        self.background_t = now
        self.charged_s += cpu_s

    def background(self, now: float) -> float:
        if self.background_cores == 0.0:
            return 0.0
        return self.background_cores * math.exp(-max(0.0, now - self.background_t) / self.tau_s)

    def acquire(self, cores: float, now: float) -> float:
        """Take ``cores`` for a service starting ``now``; the returned factor (≥ 1) stretches it when
        oversubscribed."""
        self.in_use += cores
        if self.capacity <= 0:
            return 1.0
        stolen = self.stolen(now)
        if self.steal_model == "gang":
            left = max(self.capacity - self.background(now), MIN_LEFT_SHARE * self.capacity)
            return max(1.0, self.in_use / left) * (1.0 - stolen) ** -math.ceil(cores - 1e-9)
        left = max(self.capacity * (1.0 - stolen) - self.background(now), MIN_LEFT_SHARE * self.capacity)
        return max(1.0, self.in_use / left)

    def release(self, cores: float) -> None:
        self.in_use = max(0.0, self.in_use - cores)


@dataclass
class Stats:
    busy_s: float = 0.0  # slot-seconds (slot servers) or stepping seconds (engines)
    queue_area: float = 0.0  # ∫ waiting-queue length dt
    queue_max: int = 0
    last_t: float = 0.0
    wait_s: float = 0.0
    calls: int = 0
    steps: int = 0
    batch_sum: int = 0  # Σ running batch over steps (engines)

    def queue_changed(self, now: float, length_before: int) -> None:
        self.queue_area += length_before * (now - self.last_t)
        self.last_t = now


@dataclass
class Replica:
    """Common part: a FIFO of waiting tasks and the hooks into the event loop."""

    heap: list[Event]
    tick: Callable[[], int]  # the heap's tie-breaking counter: events at one time run in the order scheduled
    done: Callable[[Task, float], None]
    cores: CorePool | None
    waiting: deque[tuple[Task, float]] = field(default_factory=deque)
    stats: Stats = field(default_factory=Stats)

    def load(self) -> int:
        raise NotImplementedError

    def submit(self, task: Task, now: float) -> None:
        raise NotImplementedError

    def _enqueue(self, task: Task, now: float) -> None:
        self.stats.queue_changed(now, len(self.waiting))
        self.waiting.append((task, now))
        self.stats.queue_max = max(self.stats.queue_max, len(self.waiting))

    def _dequeue(self, now: float) -> tuple[Task, float]:
        self.stats.queue_changed(now, len(self.waiting))
        task, since = self.waiting.popleft()
        self.stats.wait_s += now - since
        return task, since


@dataclass
class SlotServer(Replica):
    """``slots`` calls in service at once, FIFO beyond; service time fixed (the plan's latency) or exponential."""

    slots: int = 1
    service_s: float = 0.0
    exponential: bool = False
    rng: random.Random | None = None
    cores_per_call: float = 0.0  # cores one call holds while in service (CPU tiers)
    busy: int = 0

    def load(self) -> int:
        return self.busy + len(self.waiting)

    def submit(self, task: Task, now: float) -> None:
        if self.busy < self.slots:
            self._start(task, now)
        else:
            self._enqueue(task, now)

    def _start(self, task: Task, now: float) -> None:
        self.busy += 1
        s = self.service_s
        if self.exponential and self.rng is not None and s > 0:
            s = self.rng.expovariate(1.0 / s)
        if self.cores is not None and self.cores_per_call:
            s *= self.cores.acquire(self.cores_per_call, now)
        self.stats.busy_s += s
        heapq.heappush(self.heap, (now + s, self.tick(), self._finish, task))

    def _finish(self, task: Task, now: float) -> None:
        self.busy -= 1
        self.stats.calls += 1
        if self.cores is not None and self.cores_per_call:
            self.cores.release(self.cores_per_call)
        if self.waiting:
            nxt, _ = self._dequeue(now)
            self._start(nxt, now)
        self.done(task, now)


@dataclass
class PrefillEngine(Replica):
    """vLLM's scheduler for prompt processing: up to ``max_num_seqs`` sequences and ``max_num_batched_tokens``
    tokens a step; a prompt that does not fit the token budget is chunked over steps (chunked prefill)."""

    max_num_seqs: int = 1
    max_num_batched_tokens: int = 8192
    step_s: Callable[[int, float], float] = lambda n, tokens: 0.0  # (sequences, mean chunk tokens) -> s
    prompt_tokens: Callable[[Task], int] = lambda task: 1
    cores_per_step: float = 0.0
    running: list[list[Any]] = field(default_factory=list)  # [task, tokens left] partly prefilled
    stepping: bool = False

    def load(self) -> int:
        return len(self.running) + len(self.waiting) + (1 if self.stepping else 0)

    def submit(self, task: Task, now: float) -> None:
        self._enqueue(task, now)
        if not self.stepping:
            self._step(now)

    def _step(self, now: float) -> None:
        budget = self.max_num_batched_tokens
        batch: list[tuple[list[Any], int]] = []
        for seq in self.running:  # sequences already started keep their place
            if budget <= 0 or len(batch) >= self.max_num_seqs:
                break
            chunk = min(seq[1], budget)
            batch.append((seq, chunk))
            budget -= chunk
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            task, _ = self._dequeue(now)
            seq = [task, max(1, self.prompt_tokens(task))]
            self.running.append(seq)
            chunk = min(seq[1], budget)
            batch.append((seq, chunk))
            budget -= chunk
        if not batch:
            self.stepping = False
            return
        self.stepping = True
        tokens = sum(c for _, c in batch)
        dt = self.step_s(len(batch), tokens / len(batch))
        if self.cores is not None and self.cores_per_step:
            dt *= self.cores.acquire(self.cores_per_step, now)
        self.stats.busy_s += dt
        self.stats.steps += 1
        self.stats.batch_sum += len(batch)
        heapq.heappush(self.heap, (now + dt, self.tick(), self._end, batch))

    def _end(self, batch: list[tuple[list[Any], int]], now: float) -> None:
        if self.cores is not None and self.cores_per_step:
            self.cores.release(self.cores_per_step)
        finished = []
        for seq, chunk in batch:
            seq[1] -= chunk
            if seq[1] <= 0:
                finished.append(seq)
        for seq in finished:
            self.running.remove(seq)
            self.stats.calls += 1
        self._step(now)
        for seq in finished:
            self.done(seq[0], now)


@dataclass
class DecodeEngine(Replica):
    """Continuous batching: waiting sequences join the running batch at every step boundary up to
    ``max_num_seqs``; each step generates one token for every running sequence; a sequence leaves after its
    drawn output tokens. The step's time is the cost model's at the batch and mean context actually formed.

    Steps run in segments, one event each: from a boundary to the next finish (at most SEGMENT_STEPS), cut
    short at the step in progress when a sequence arrives that may join (the batch is below ``max_num_seqs``).
    Each step of a segment takes the step time at the segment's middle context (the context grows one token a
    step, and the step time is memoised on a 32-token grid anyway)."""

    max_num_seqs: int = 1
    step_s: Callable[[int, float], float] = lambda b, ctx: 0.0  # (batch, mean context tokens) -> s
    sizes: Callable[[Task], tuple[int, int]] = lambda task: (1, 1)  # (prompt, output) tokens
    first_token: Callable[[Task, float], None] = lambda task, now: None
    cores_per_step: float = 0.0
    cpu_s_per_token: float = 0.0  # the engine front-end's work per generated token, charged to ``cores``
    finish_heap: list[tuple[int, int, Task, int]] = field(default_factory=list)  # (last step, seq, task, ctx0)
    step_no: int = 0
    ctx_base: float = 0.0  # Σ (prompt − join step) over running sequences: context sum = ctx_base + B·step_no
    seq_id: int = 0
    stepping: bool = False
    generation: int = 0  # the live segment's; an event of an older (cut) segment is ignored
    seg_start: float = 0.0
    seg_dt: float = 0.0  # every step of a segment takes the step time at its middle context
    seg_steps: int = 0
    seg_joined: list[Task] = field(default_factory=list)

    def load(self) -> int:
        return len(self.finish_heap) + len(self.waiting)

    def submit(self, task: Task, now: float) -> None:
        self._enqueue(task, now)
        if not self.stepping:
            self._step(now)
        elif len(self.finish_heap) < self.max_num_seqs and self.seg_dt > 0:
            done_steps = int((now - self.seg_start) / self.seg_dt)  # the step in progress ends after it
            if done_steps + 1 < self.seg_steps:
                self.seg_steps = done_steps + 1
                self.generation += 1
                end = self.seg_start + self.seg_steps * self.seg_dt
                heapq.heappush(self.heap, (end, self.tick(), self._end, self.generation))

    def _step(self, now: float) -> None:
        joined: list[Task] = []
        running = self.finish_heap
        while self.waiting and len(running) < self.max_num_seqs:
            task, _ = self._dequeue(now)
            prompt, out = self.sizes(task)
            c0 = prompt - self.step_no
            self.seq_id += 1
            heapq.heappush(running, (self.step_no + max(1, out), self.seq_id, task, c0))
            self.ctx_base += c0
            joined.append(task)
        b = len(running)
        if b == 0:
            self.stepping = False
            return
        self.stepping = True
        factor = 1.0
        if self.cores is not None and self.cores_per_step:
            factor = self.cores.acquire(self.cores_per_step, now)
        k = min(running[0][0] - self.step_no, SEGMENT_STEPS)
        dt = self.step_s(b, self.ctx_base / b + self.step_no + (k - 1) / 2.0) * factor
        self.seg_start, self.seg_dt, self.seg_steps, self.seg_joined = now, dt, k, joined
        self.generation += 1
        heapq.heappush(self.heap, (now + k * dt, self.tick(), self._end, self.generation))

    def _end(self, generation: int, now: float) -> None:
        if generation != self.generation:
            return
        if self.cores is not None and self.cores_per_step:
            self.cores.release(self.cores_per_step)
        k, b = self.seg_steps, len(self.finish_heap)
        if self.cores is not None and self.cpu_s_per_token:
            self.cores.charge(self.cpu_s_per_token * k * b, now)
        st = self.stats
        st.busy_s += now - self.seg_start
        st.steps += k
        st.batch_sum += b * k
        self.step_no += k
        first = self.seg_start + self.seg_dt
        for task in self.seg_joined:
            self.first_token(task, first)
        finished = []
        while self.finish_heap and self.finish_heap[0][0] <= self.step_no:
            _, _, task, c0 = heapq.heappop(self.finish_heap)
            self.ctx_base -= c0
            finished.append(task)
        st.calls += len(finished)
        self._step(now)
        for task in finished:
            self.done(task, now)
