"""XLA:CPU thread pools: run a single-seed program on one thread, compile it on all of them.

A single-seed run of a small network executes thousands of tiny XLA kernels per iteration.
With XLA:CPU's default pool, one thread per core, it hands them between threads; on our 2-core
machine that cost 15-35% (PPO at CleanRL's settings: an iteration in 3.04 ms with a one-thread
pool, 3.7 ms, median 4.2, with the default; docs/BENCHMARKS.md, section 1). But XLA:CPU also
compiles a program's ~190 kernels in parallel on the pool of the client that compiles it, so a
one-thread client compiled the train call in 5.2-5.5 s against 2.7-2.9 s.

`use_one_xla_thread` gives JAX's CPU client a one-thread pool, and `parallel_compile` has the
programs compiled by a second CPU client with the default pool, whose executable is then
serialized and loaded into JAX's client: the same machine code (XLA's persistent compilation
cache moves executables between processes the same way), compiled at the default pool's speed
and run on one thread. Programs that call back into Python (host envs) cannot be serialized and
compile on JAX's own client.

This hooks ``jax._src.compiler.backend_compile_and_load``, a JAX internal: if a JAX release
moves or changes it, the hook is not installed (or falls back to JAX's own compile, with one
warning) and programs compile on the one-thread client as before (tests/test_xla_cpu.py fails
loudly in that case).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

_state = threading.local()  # per compiling thread: active, serialized (id -> (exe, bytes))
_lock = threading.Lock()
_one_thread = False
_broken = False  # the helper failed once: every later program compiles on JAX's client
_helper = None
_original = None
_original_put = None
compiled_on_helper = 0
"""Programs compiled on the helper client so far (for tests and benchmarks)."""


def use_one_xla_thread() -> None:
    """Start JAX's CPU backend with a one-thread pool, then give the process its CPUs back.

    XLA sizes its pool from the CPUs the calling thread may use when the backend starts, so only
    that moment is pinned. Programs compiled under `parallel_compile` then compile on a client
    with the default pool.
    """
    global _one_thread
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        return
    import jax

    os.sched_setaffinity(0, {max(cpus)})
    try:
        jax.devices()  # creates the CPU client and its thread pool
    finally:
        os.sched_setaffinity(0, cpus)
    _one_thread = True
    try:
        _helper_client()
    except Exception as error:  # noqa: BLE001 (a JAX internal moved: compile on one thread)
        _one_thread = False
        warnings.warn(
            f"fleetrl: programs compile on the one-thread CPU client ({error!r})",
            RuntimeWarning,
            stacklevel=2,
        )


def compiles_elsewhere() -> bool:
    """Whether `parallel_compile` compiles on the helper client, leaving JAX's own client free
    to compile something else at the same time."""
    return _one_thread and not _broken and _install_hook()


@contextlib.contextmanager
def parallel_compile():
    """Compile what this thread compiles inside on a CPU client with the default pool (only
    after `use_one_xla_thread`; otherwise JAX's own client already has it)."""
    if not compiles_elsewhere():
        yield
        return
    was_active = getattr(_state, "active", False)
    _state.active = True
    try:
        yield
    finally:
        _state.active = was_active
        if not was_active:  # every program compiled inside has written its cache entry
            _serialized().clear()


def _serialized() -> dict[int, tuple[object, bytes]]:
    """This thread's executables compiled on the helper: id -> (executable, helper's bytes)."""
    if not hasattr(_state, "serialized"):
        _state.serialized = {}
    return _state.serialized


def _install_hook() -> bool:
    global _original, _original_put
    with _lock:
        if _original is not None:
            return True
        try:
            from jax._src import compilation_cache, compiler
        except ImportError:
            return False
        original = getattr(compiler, "backend_compile_and_load", None)
        original_put = getattr(compilation_cache, "put_executable_and_time", None)
        if original is None or original_put is None:
            return False
        _original, _original_put = original, original_put
        compiler.backend_compile_and_load = _compile_and_load
        compilation_cache.put_executable_and_time = _put_executable_and_time
        return True


def _compile_and_load(backend, module, executable_devices, options, host_callbacks, *a, **kw):
    global _broken, compiled_on_helper
    if (
        not getattr(_state, "active", False)
        or _broken
        or host_callbacks
        or a
        or kw
        or getattr(backend, "platform", None) != "cpu"
        or len(executable_devices) != 1
    ):
        return _original(backend, module, executable_devices, options, host_callbacks, *a, **kw)
    try:
        helper = _helper_client()
        executable = _compile_on(helper, module, options)
        serialized = helper.serialize_executable(executable)
        del executable
        loaded = backend.deserialize_executable(serialized, executable_devices, options)
        _serialized()[id(loaded)] = (loaded, serialized)
        with _lock:
            compiled_on_helper += 1
        return loaded
    except Exception as error:  # noqa: BLE001 (any failure here means: compile as JAX would)
        if not _broken:
            _broken = True  # once: a real compile error then shows up from JAX's own compile
            warnings.warn(
                f"fleetrl: the programs compile on JAX's one-thread CPU client from now on "
                f"({error!r})",
                RuntimeWarning,
                stacklevel=2,
            )
        return _original(backend, module, executable_devices, options, host_callbacks)


class _Serialized:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> bytes:
        return self.data


def _put_executable_and_time(cache_key, module_name, executable, *args, **kwargs):
    """JAX's persistent-cache write, given the helper's bytes for an executable it compiled.

    Why: with jaxlib 0.10.2 an executable loaded with ``deserialize_executable`` serializes
    without its machine code (5.4 kB against 8.1 kB for a small program), and another process
    that loads those bytes fails with "Function ... not found". The helper's own bytes load.
    """
    made = _serialized().pop(id(executable), None)
    if made is not None and made[0] is executable:
        executable = _Serialized(made[1])
    return _original_put(cache_key, module_name, executable, *args, **kwargs)


def _helper_client():
    """A second XLA CPU client, made and first used by an unpinned thread: its pool has one
    thread per CPU the process may use. It only compiles; nothing runs on it."""
    global _helper
    with _lock:
        if _helper is None:
            from jaxlib import xla_client

            _helper = xla_client.make_cpu_client(asynchronous=True)
            _warm_up(_helper)
        return _helper


def _warm_up(helper) -> None:
    """Compile a trivial program on ``helper`` now, from this unpinned thread.

    Why: some of the threads XLA compiles with are started on first use and take the affinity
    of the thread that starts them; left to the first real compilation, two of them were pinned
    to the one-thread client's CPU, and PPO's train call compiled in 3.0 s instead of 1.7 s
    (CartPole, our 2 cores). This costs ~25 ms.
    """
    import jax
    from jax._src import compiler

    module = jax.jit(lambda x: x + 1).lower(1.0).compiler_ir("stablehlo")
    _compile_on(helper, module, compiler.get_compile_options(num_replicas=1, num_partitions=1))


def _compile_on(helper, module, options):
    """``module`` compiled and loaded on ``helper``'s first CPU device."""
    from jaxlib import xla_client

    devices = xla_client.DeviceList(tuple(helper.devices()[:1]))
    return helper.compile_and_load(module, executable_devices=devices, compile_options=options)
