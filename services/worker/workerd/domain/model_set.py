"""The models of one worker: which are loaded, loading or idle, and their engines.

A worker runs one engine kind and may serve several models, each its own
:class:`~workerd.domain.engine.Engine` instance. :class:`ModelSet` owns them:
it loads a model on request (after a VRAM preflight), unloads it (waiting for
its running generations, or aborting them), hands Generate the engine of a
loaded model while marking the generation running, and unloads models left
idle. It is pure asyncio: engines come from a factory and the GPU from a
reader, both passed in, so tests drive it with the sim engine or a fake.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from hearth.errors import HearthError, NotFound, Unavailable
from workerd.domain.engine import Engine, EngineStats, ServedModel
from workerd.domain.vram import check_fits
from workerd.domain.worker_status import GpuStatus

log = logging.getLogger(__name__)

ModelState = Literal["unloaded", "loading", "loaded", "unloading", "failed"]

#: Load estimate before any load of a local model of unknown size, in seconds.
DEFAULT_LOAD_ESTIMATE_SECONDS = 10.0
#: Load estimate of a model on a remote API (its start() only checks the upstream).
REMOTE_LOAD_ESTIMATE_SECONDS = 1.0
#: A local model of known size: this much fixed cost (process, CUDA context) ...
LOAD_BASE_SECONDS = 2.0
#: ... plus this much per GiB of weights (a local NVMe read plus the copy to the GPU).
LOAD_SECONDS_PER_GIB = 1.0

_GIB = 1024**3


@dataclass(frozen=True)
class ModelSpec:
    """A model the worker may load, as known before it is loaded.

    Attributes:
        served: its name, context length, tool support and remoteness.
        vram_bytes: GPU memory it needs, for the preflight; 0 when unknown
            (no preflight) or when it does not run on the GPU.
        load_estimate_seconds: how long a load is expected to take before the
            first one is measured; None derives it from the size (see
            :meth:`ModelSet.describe`).
    """

    served: ServedModel
    vram_bytes: int = 0
    load_estimate_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.served.name


@dataclass(frozen=True)
class ModelStatus:
    """One loadable model as the worker reports it (GetInfo, heartbeats)."""

    name: str
    context_length: int
    state: ModelState
    #: GPU memory a load needs, in bytes; 0 when unknown.
    vram_estimate_bytes: int
    #: The last load's duration, or the estimate before any load.
    load_estimate_seconds: float
    #: Why the last load failed (state "failed"); empty otherwise.
    error: str
    supports_tools: bool
    remote: bool
    #: Generations running on it now.
    running: int


class _Slot:
    """The mutable record of one loadable model."""

    __slots__ = (
        "engine",
        "error",
        "idle",
        "last_load_seconds",
        "last_used",
        "running",
        "spec",
        "state",
        "task",
    )

    def __init__(self, spec: ModelSpec, now: float) -> None:
        self.spec = spec
        self.state: ModelState = "unloaded"
        self.engine: Engine | None = None
        self.running: set[str] = set()
        # Set while no generation runs: what an unload waits for.
        self.idle = asyncio.Event()
        self.idle.set()
        self.last_used = now
        self.last_load_seconds: float | None = None
        self.error = ""
        # The load or unload under way, shared by every caller that waits for it.
        self.task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name


class ModelSet:
    """The loadable models of one worker and the engines of the loaded ones.

    States: ``unloaded`` -> ``loading`` -> ``loaded`` -> ``unloading`` ->
    ``unloaded``; a load that fails leaves ``failed`` (with the error kept)
    until the next load or an unload.

    Guarantees:

    * :meth:`load` is idempotent and concurrent callers share one load. The
      VRAM preflight runs before the engine is built; a refusal leaves the
      state as it was.
    * From the moment :meth:`unload` is called, new generations of the model
      are refused (``MODEL_NOT_LOADED``); running ones finish (or are aborted
      with ``force``) before the engine is cleaned up.
    * :meth:`cleanup` stops the idle loop, cancels loads and unloads and
      cleans up every engine; it is safe twice. Nothing loads after it.
    * ``on_change`` is called (synchronously) after every state change, so the
      worker can announce it at once.

    Args:
        specs: the loadable models, in the order they are reported.
        build_engine: a new, not started engine for a model name.
        read_gpu: the GPU as of now, for the preflight.
        reserve_bytes: GPU memory the preflight keeps free.
        idle_unload_seconds: unload a loaded model after this long without a
            running generation (since its load or its last generation); 0 never.
        keep_one_loaded: idle unloading spares the most recently used model
            when it would otherwise unload the last one.
        idle_check_seconds: how often the idle loop looks; default a quarter
            of ``idle_unload_seconds``, at most 1 s.
        clock: monotonic seconds, for idle times and load durations.
        on_change: called after every state change.
    """

    def __init__(
        self,
        specs: Sequence[ModelSpec],
        build_engine: Callable[[str], Engine],
        *,
        read_gpu: Callable[[], GpuStatus],
        reserve_bytes: int = 0,
        idle_unload_seconds: float = 0.0,
        keep_one_loaded: bool = True,
        idle_check_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if not specs:
            raise ValueError("a worker needs at least one loadable model")
        if idle_unload_seconds < 0:
            raise ValueError("idle_unload_seconds must not be negative")
        self._build_engine = build_engine
        self._read_gpu = read_gpu
        self._reserve_bytes = reserve_bytes
        self._idle_unload_seconds = idle_unload_seconds
        self._keep_one_loaded = keep_one_loaded
        self._idle_check_seconds = idle_check_seconds or min(1.0, idle_unload_seconds / 4 or 1.0)
        self._clock = clock
        self._on_change = on_change
        now = clock()
        self._slots: dict[str, _Slot] = {}
        for spec in specs:
            self._slots.setdefault(spec.name, _Slot(spec, now))
        self._idle_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- queries ---------------------------------------------------------

    def names(self) -> list[str]:
        """The loadable models' names, in order."""
        return list(self._slots)

    def served_models(self) -> list[ServedModel]:
        """Every loadable model as Generate validates requests against it."""
        return [slot.spec.served for slot in self._slots.values()]

    def state(self, name: str) -> ModelState:
        """The state of a loadable model (NotFound MODEL_NOT_FOUND otherwise)."""
        return self._slot(name).state

    def describe(self) -> list[ModelStatus]:
        """Every loadable model with its state, in order.

        ``load_estimate_seconds`` is the last load's duration; before any load
        it is the spec's estimate, else 1 s for a remote model, else
        2 s + 1 s per GiB of ``vram_bytes``, else 10 s.
        """
        return [self._status(slot) for slot in self._slots.values()]

    def stats(self) -> EngineStats:
        """The engines' load together: running and waiting summed; the KV-cache
        use of the fullest engine that reports one (they share the card, and
        the fullest is the one that stalls first)."""
        running = waiting = 0
        usage: float | None = None
        for slot in self._slots.values():
            if slot.engine is None:
                continue
            stats = slot.engine.stats()
            running += stats.running
            waiting += stats.waiting
            if stats.kv_cache_usage is not None:
                usage = stats.kv_cache_usage if usage is None else max(usage, stats.kv_cache_usage)
        return EngineStats(running=running, waiting=waiting, kv_cache_usage=usage)

    # -- generations -----------------------------------------------------

    def engine_for(self, name: str) -> Engine:
        """The engine serving ``name``.

        Raises:
            NotFound: MODEL_NOT_FOUND, the model is not loadable here.
            Unavailable: MODEL_NOT_LOADED, it is loadable but not loaded now
                (metadata: model, state; a retry delay while it loads).
        """
        slot = self._slot(name)
        if slot.state != "loaded" or slot.engine is None:
            raise self._not_loaded(slot)
        return slot.engine

    @contextmanager
    def generation(self, name: str, job_id: str) -> Iterator[Engine]:
        """Mark ``job_id`` running on ``name`` for the block and give its
        engine; errors as :meth:`engine_for`. An unload waits for the block to
        end; the model's idle time starts again when it does."""
        engine = self.engine_for(name)
        slot = self._slots[name]
        slot.running.add(job_id)
        slot.idle.clear()
        slot.last_used = self._clock()
        try:
            yield engine
        finally:
            slot.running.discard(job_id)
            slot.last_used = self._clock()
            if not slot.running:
                slot.idle.set()

    async def abort(self, job_id: str) -> bool:
        """Abort ``job_id`` on whichever engine runs it; False when none does."""
        for slot in self._slots.values():
            if job_id in slot.running and slot.engine is not None:
                return await slot.engine.abort(job_id)
        return False

    # -- load and unload -------------------------------------------------

    async def load(self, name: str) -> ModelStatus:
        """Load ``name`` and return once it serves; loaded already is fine.

        A load under way is joined; an unload under way is waited for first.

        Raises:
            NotFound: MODEL_NOT_FOUND, not loadable here.
            FailedPrecondition: INSUFFICIENT_VRAM from the preflight (the
                state does not change).
            Unavailable: ENGINE_ERROR, the engine failed to start (the state
                turns ``failed`` and keeps the error); WORKER_STOPPING after
                cleanup().
        """
        slot = self._slot(name)
        while True:
            self._check_open()
            if slot.state == "loaded":
                return self._status(slot)
            if slot.state == "loading" and slot.task is not None:
                await _join(slot.task)
                continue
            if slot.state == "unloading" and slot.task is not None:
                await asyncio.wait([slot.task])
                continue
            self._preflight(slot)
            slot.state = "loading"
            slot.error = ""
            slot.task = self._spawn(self._load(slot), f"load-{name}")
            self._changed()

    async def unload(self, name: str, *, force: bool = False) -> ModelStatus:
        """Unload ``name``; unloaded already is fine (a failed model turns
        unloaded and forgets its error). New generations are refused at once;
        running ones finish first, or with ``force`` are aborted. A load under
        way is waited for, then undone.

        Raises:
            NotFound: MODEL_NOT_FOUND, not loadable here.
        """
        slot = self._slot(name)
        while True:
            if slot.state == "unloaded":
                return self._status(slot)
            if slot.state == "failed":
                slot.state, slot.error = "unloaded", ""
                self._changed()
                return self._status(slot)
            if slot.state == "loading" and slot.task is not None:
                await asyncio.wait([slot.task])
                continue
            if slot.state == "unloading" and slot.task is not None:
                if force:
                    await self._abort_running(slot)
                await _join(slot.task)
                continue
            self._begin_unload(slot, force=force)

    async def unload_idle(self) -> list[str]:
        """One pass of idle unloading: unload every loaded model without a
        running generation for ``idle_unload_seconds`` (sparing the most
        recently used one if ``keep_one_loaded`` and all are idle). Returns
        the models unloaded, once they are."""
        if self._idle_unload_seconds <= 0 or self._closed:
            return []
        now = self._clock()
        loaded = [slot for slot in self._slots.values() if slot.state == "loaded"]
        idle = [
            slot for slot in loaded if not slot.running and now - slot.last_used >= self._idle_unload_seconds
        ]
        if self._keep_one_loaded and idle and len(idle) == len(loaded):
            idle.remove(max(idle, key=lambda slot: slot.last_used))
        tasks = []
        for slot in idle:
            log.info(
                "unloading %r: idle for %.1f s", slot.name, now - slot.last_used, extra={"model": slot.name}
            )
            tasks.append(self._begin_unload(slot, force=False))
        if tasks:
            await asyncio.wait(tasks)
        return [slot.name for slot in idle]

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Start the idle-unload loop (a no-op when idle unloading is off)."""
        if self._idle_task is None and self._idle_unload_seconds > 0 and not self._closed:
            self._idle_task = asyncio.create_task(self._unload_idle_forever(), name="workerd-idle-unload")

    async def stop(self) -> None:
        """Stop the idle-unload loop; safe twice."""
        task, self._idle_task = self._idle_task, None
        if task is not None:
            task.cancel()
            # wait() rather than await: a cancellation of stop() itself still propagates.
            await asyncio.wait([task])

    async def cleanup(self) -> None:
        """Stop everything and clean up every engine; safe twice."""
        self._closed = True
        await self.stop()
        tasks = [slot.task for slot in self._slots.values() if slot.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for slot in self._slots.values():
            engine, slot.engine = slot.engine, None
            if engine is not None:
                try:
                    await engine.cleanup()
                except Exception:
                    log.exception("cleanup of the engine of %r failed", slot.name)
            if slot.state != "failed":
                slot.state = "unloaded"

    # -- internals -------------------------------------------------------

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            loadable = ", ".join(self._slots)
            raise NotFound(
                f"model {name!r} is not served here (loadable: {loadable})",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name, "served": loadable},
            )
        return slot

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the worker is stopping", reason="WORKER_STOPPING")

    def _status(self, slot: _Slot) -> ModelStatus:
        served = slot.spec.served
        return ModelStatus(
            name=served.name,
            context_length=served.context_length,
            state=slot.state,
            vram_estimate_bytes=slot.spec.vram_bytes,
            load_estimate_seconds=self._load_estimate(slot),
            error=slot.error,
            supports_tools=served.supports_tools,
            remote=served.remote,
            running=len(slot.running),
        )

    def _load_estimate(self, slot: _Slot) -> float:
        if slot.last_load_seconds is not None:
            return slot.last_load_seconds
        spec = slot.spec
        if spec.load_estimate_seconds is not None:
            return spec.load_estimate_seconds
        if spec.served.remote:
            return REMOTE_LOAD_ESTIMATE_SECONDS
        if spec.vram_bytes:
            return LOAD_BASE_SECONDS + LOAD_SECONDS_PER_GIB * spec.vram_bytes / _GIB
        return DEFAULT_LOAD_ESTIMATE_SECONDS

    def _not_loaded(self, slot: _Slot) -> Unavailable:
        estimate = self._load_estimate(slot)
        return Unavailable(
            f"model {slot.name!r} is {slot.state} on this worker, not loaded",
            reason="MODEL_NOT_LOADED",
            metadata={"model": slot.name, "state": slot.state, "load_estimate_seconds": f"{estimate:.1f}"},
            retry_after=min(estimate, 1.0) if slot.state == "loading" else None,
        )

    def _preflight(self, slot: _Slot) -> None:
        needed = slot.spec.vram_bytes
        if not needed:
            return
        gpu = self._read_gpu()
        # Loads under way have not taken all their memory yet: count them as taken.
        pending = sum(s.spec.vram_bytes for s in self._slots.values() if s.state == "loading")
        if pending:
            gpu = dataclasses.replace(gpu, memory_free_bytes=max(0, gpu.memory_free_bytes - pending))
        check_fits(slot.name, needed, gpu, reserve_bytes=self._reserve_bytes)

    async def _load(self, slot: _Slot) -> None:
        started = self._clock()
        engine: Engine | None = None
        try:
            engine = self._build_engine(slot.name)
            log.info("loading %r (%s engine)", slot.name, engine.kind, extra={"model": slot.name})
            await engine.start()
        except asyncio.CancelledError:
            if engine is not None:
                await _cleanup_quietly(engine, slot.name)
            slot.state, slot.task = "unloaded", None
            self._changed()
            raise
        except Exception as err:
            if engine is not None:
                await _cleanup_quietly(engine, slot.name)
            slot.state, slot.task = "failed", None
            slot.error = str(err) or type(err).__name__
            log.error("loading %r failed: %s", slot.name, slot.error, extra={"model": slot.name})
            self._changed()
            raise _load_error(slot.name, err) from err
        slot.engine = engine
        slot.state, slot.task = "loaded", None
        slot.last_load_seconds = max(0.0, self._clock() - started)
        slot.last_used = self._clock()
        log.info("loaded %r in %.1f s", slot.name, slot.last_load_seconds, extra={"model": slot.name})
        self._changed()

    def _begin_unload(self, slot: _Slot, *, force: bool) -> asyncio.Task[None]:
        """Turn a loaded model unloading (refusing new generations from now)
        and start its unload."""
        slot.state = "unloading"
        task = self._spawn(self._unload(slot, force=force), f"unload-{slot.name}")
        slot.task = task
        self._changed()
        return task

    async def _unload(self, slot: _Slot, *, force: bool) -> None:
        try:
            if force:
                await self._abort_running(slot)
            await slot.idle.wait()
        finally:
            engine, slot.engine = slot.engine, None
            if engine is not None:
                await _cleanup_quietly(engine, slot.name)
            slot.state = "unloaded"
            slot.task = None
            log.info("unloaded %r", slot.name, extra={"model": slot.name})
            self._changed()

    async def _abort_running(self, slot: _Slot) -> None:
        engine = slot.engine
        if engine is None:
            return
        for job_id in list(slot.running):
            await engine.abort(job_id)

    async def _unload_idle_forever(self) -> None:
        while True:
            await asyncio.sleep(self._idle_check_seconds)
            try:
                await self.unload_idle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("idle unload pass failed")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        # Every waiter sees the outcome; this keeps a failure nobody waited
        # for from being reported as "never retrieved".
        task.add_done_callback(_consume_outcome)
        return task

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


async def _join(task: asyncio.Task[None]) -> None:
    """Wait for a shared load or unload; its failure is raised to every
    waiter, and a waiter's cancellation does not cancel it."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if task.cancelled() and not (current is not None and current.cancelling()):
            raise Unavailable("the worker is stopping", reason="WORKER_STOPPING") from None
        raise


def _consume_outcome(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _cleanup_quietly(engine: Engine, model: str) -> None:
    try:
        await engine.cleanup()
    except Exception:
        log.exception("cleanup of the engine of %r failed", model)


def _load_error(model: str, err: Exception) -> HearthError:
    """What a failed engine start is reported as: a VRAM refusal keeps its
    reason, anything else is ENGINE_ERROR (with the engine's own reason, if
    it gave one, in metadata)."""
    if isinstance(err, HearthError) and err.reason == "INSUFFICIENT_VRAM":
        return err
    metadata = {"model": model, "error": str(err) or type(err).__name__}
    if isinstance(err, HearthError):
        metadata["cause_reason"] = err.reason
    return Unavailable(f"model {model!r} failed to load: {err}", reason="ENGINE_ERROR", metadata=metadata)
