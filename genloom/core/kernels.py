"""Kernel dispatch: model code calls an op by name; the dispatcher picks the backend.

Backends come from the ``genloom_kernels`` hook (records of kind ``kernel`` with an ``op``). A
backend's factory returns an object with ``supports(**query) -> str | None`` (None: usable, else
the reason it is not) and ``__call__``. The dispatcher takes the pinned backend for the op (config
``kernels: {op: backend}`` or :func:`use`), otherwise the usable backend of highest priority, and
logs once why it chose it. Every op has a ``reference`` backend it falls back to.
"""

from __future__ import annotations

import contextlib
import logging
import threading

log = logging.getLogger("genloom.kernels")

_pins: dict[str, str] = {}  # process-wide pins (kernels.pin)
_impls: dict[tuple[str, str], object] = {}
_choice_cache: dict[tuple, object] = {}
_traced_choices: dict[tuple, object] = {}  # what a compiled region calls: the last eager choice per query
_logged: set = set()
_local = threading.local()


def _registry():
    from genloom.core.plugins import get_registry

    return get_registry()


def implementation(op: str, name: str):
    """The built backend ``name`` of ``op``."""
    key = (op, name)
    if key not in _impls:
        recs = [r for r in _registry().kernels_for(op) if r.name == name]
        if not recs:
            known = ", ".join(r.name for r in _registry().kernels_for(op)) or "none"
            raise KeyError(f"no backend '{name}' for op '{op}' (known: {known})")
        rec = recs[0]
        _impls[key] = rec.load_factory()(rec.config(), None)
    return _impls[key]


def pin(op: str, backend: str | None) -> None:
    """Pin ``op`` to ``backend`` for this process (None or 'auto' unpins)."""
    if backend in (None, "auto"):
        _pins.pop(op, None)
    else:
        implementation(op, backend)  # fail early on a bad name
        _pins[op] = backend
    _choice_cache.clear()


@contextlib.contextmanager
def scope(pins: dict[str, str] | None):
    """Prefer these backends (op -> name, 'auto' for none) in this thread, e.g. around one model's
    forward: a config's ``kernels:`` pins apply to the model built from it, not to the process.
    Unlike :func:`use`, a scoped backend that cannot run falls back to automatic selection."""
    pins = {op: b for op, b in (pins or {}).items() if b and b != "auto"}
    if not pins or _compiling():  # a compiled region replays the eager choices (see call)
        yield
        return
    old = getattr(_local, "scoped", None)
    _local.scoped = {**(old or {}), **pins}
    try:
        yield
    finally:
        _local.scoped = old


@contextlib.contextmanager
def use(op: str, backend: str):
    """Temporarily force ``backend`` for ``op`` in this thread (tests compare backends this way)."""
    stack = getattr(_local, "forced", None)
    if stack is None:
        stack = _local.forced = {}
    old = stack.get(op)
    stack[op] = backend
    try:
        yield implementation(op, backend)
    finally:
        if old is None:
            stack.pop(op, None)
        else:
            stack[op] = old


def status(op: str, **query) -> list[tuple[str, int, str | None]]:
    """(backend, priority, reason it is unusable or None) for every backend of ``op``."""
    out = []
    for rec in _registry().kernels_for(op):
        try:
            reason = implementation(op, rec.name).supports(**query)
        except Exception as exc:  # a backend whose import fails is unusable, not fatal
            reason = f"{type(exc).__name__}: {exc}"
        out.append((rec.name, rec.priority, reason))
    return out


def select(op: str, **query):
    """The backend object that will run ``op`` for ``query`` (device, dtype, pattern, ...)."""
    forced = getattr(_local, "forced", {}).get(op)
    name = forced or (getattr(_local, "scoped", None) or {}).get(op) or _pins.get(op)
    if name:
        impl = implementation(op, name)
        reason = impl.supports(**query)
        if reason is None:
            return impl
        if forced:
            raise RuntimeError(f"kernel {op}/{name} cannot run here: {reason}")
        _log_once((op, name, reason), f"kernel {op}: pinned backend '{name}' cannot run ({reason}); falling back")
    cache_key = (op, *sorted((k, _hashable(v)) for k, v in query.items()))
    if cache_key in _choice_cache:
        return _choice_cache[cache_key]
    reasons = []
    for prio, rec, impl in _ranked(op, query):
        try:
            reason = impl.supports(**query) if impl is not None else "failed to build"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            why = f"; skipped {', '.join(reasons)}" if reasons else ""
            _log_once((op, rec.name, why), f"kernel {op}: using '{rec.name}' (priority {prio}){why}")
            _choice_cache[cache_key] = impl
            return impl
        reasons.append(f"{rec.name}: {reason}")
    raise RuntimeError(f"no usable backend for kernel op '{op}': {'; '.join(reasons) or 'none registered'}")


def _ranked(op: str, query: dict):
    """Backends by priority for this query: a backend's ``priority(**query)`` method, when it has
    one, overrides its record's priority (e.g. a reference that beats a parallel form on CPU)."""
    out = []
    for rec in _registry().kernels_for(op):
        try:
            impl = implementation(op, rec.name)
        except Exception:
            impl = None
        prio = rec.priority
        if impl is not None and hasattr(impl, "priority"):
            try:
                prio = int(impl.priority(**query))
            except Exception:
                pass
        out.append((prio, rec, impl))
    return sorted(out, key=lambda x: -x[0])


def call(op: str, *args, **kwargs):
    """Run ``op``; the backend is chosen from the tensors' device and dtype and the ``pattern`` kwarg."""
    first = next((a for a in args if hasattr(a, "device")), None)
    query = {}
    if first is not None:
        query = {"device": first.device, "dtype": first.dtype}
    if "pattern" in kwargs:
        query["pattern"] = kwargs["pattern"]
    if kwargs.get("requires_grad") is None and first is not None:
        query["requires_grad"] = bool(getattr(first, "requires_grad", False))
    key = (op, query.get("device"), query.get("dtype"), query.get("pattern"), query.get("requires_grad"))
    if _compiling():
        # torch.compile cannot trace the selection (thread-local pins, logging): a compiled region
        # calls the backend the same query got in eager mode, e.g. in the prefill before a
        # compiled decode step (genloom.core.static_decode)
        impl = _traced_choices.get(key)
        if impl is None:
            raise RuntimeError(f"kernel op '{op}' has no backend chosen yet for {query}: run the model once eagerly before compiling it")
        return impl(*args, **kwargs)
    impl = select(op, **query)
    _traced_choices[key] = impl
    return impl(*args, **kwargs)


def _compiling() -> bool:
    """True while torch.compile traces (without importing torch for the CLI's sake)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def _hashable(v):
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def _log_once(key, message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(message)
