"""The static-cache decode path: a preallocated KV cache and one compiled single-token step.

``generate(..., cache="static")`` (config ``generate.cache: static``) decodes through a
:class:`~genloom.core.state.StaticKVCache` instead of the growing :class:`~genloom.core.state.KVCache`:
every decode step then has the same shapes (the step attends over the whole preallocated store with
a validity mask), so ``compile=True`` can hand the step to ``torch.compile`` once and reuse the
compiled graph for every token, every batch row and every later ``generate`` call of the same batch
size and capacity. On CUDA the mode is ``reduce-overhead`` (the step is replayed as a CUDA graph; the
cache tensors are marked as static addresses); elsewhere it is inductor's default mode.

Only advances of one token go through the compiled step; the prefill and multi-token advances
(speculative verification) run eagerly through the same static cache. Decoders do not change: the
session's model is wrapped in a :class:`StaticDecoding` that hands out static caches and routes the
one-token forward passes. A backbone opts in with ``static_cache = True`` when it reaches its
:class:`~genloom.core.state.KVCache` only through ``begin``/``update`` and its forward is free of
Python-side branches on tensor values.
"""

from __future__ import annotations

import weakref

import torch

from genloom.core.errors import ConfigError
from genloom.core.state import KVCache, StaticKVCache

CACHES = ("dynamic", "static")

#: The static cache's capacity is rounded up to a multiple of this, so that calls with slightly
#: different prompt or output lengths reuse the same cache and compiled graph.
CAPACITY_QUANTUM = 64

_prepared: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def static_cache_unsupported(model) -> str | None:
    """Why ``model``'s backbone cannot decode with a static cache, or None when it can."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return "the model has no backbone"
    if not getattr(backbone, "static_cache", False):
        name = type(backbone).__name__
        return (f"backbone {name} does not support a static cache (it needs an attention backbone that declares "
                f"static_cache = True and keeps its keys/values in the core KVCache)")
    return None


def check_options(cache: str, compile: bool, path: str = "generate") -> None:
    """Validate the ``cache``/``compile`` pair (a ConfigError naming the field otherwise)."""
    if cache not in CACHES:
        raise ConfigError(f"cache must be one of {', '.join(CACHES)}, got '{cache}'", path=f"{path}.cache")
    if compile and cache != "static":
        raise ConfigError("compile=true needs cache=static (the dynamic cache changes shape at every step, so a compiled step would recompile each time)", path=f"{path}.compile")


def prepare(model, *, cache: str = "static", compile: bool = False, mode: str | None = None, backend: str = "inductor") -> "StaticDecoding":
    """The :class:`StaticDecoding` of ``model`` (one per model and compile setting, kept between calls).

    ``mode`` is torch.compile's mode (default: :func:`default_mode` of the device); ``backend`` its
    backend (``inductor``; tests use ``aot_eager`` to check the capture without inductor's build time).
    """
    check_options(cache, compile)
    reason = static_cache_unsupported(model)
    if reason is not None:
        raise ConfigError(f"cache=static is not available: {reason}; use cache=dynamic", path="generate.cache")
    per_model = _prepared.setdefault(model, {})
    key = (compile, mode, backend)
    if key not in per_model:
        per_model[key] = StaticDecoding(model, compile=compile, mode=mode, backend=backend)
    return per_model[key]


def default_mode(device) -> str | None:
    """``reduce-overhead`` (CUDA graphs) on CUDA, inductor's default mode elsewhere."""
    return "reduce-overhead" if torch.device(device).type == "cuda" else None


def _step(model, ids, state, pattern):
    return model(ids, pattern=pattern, state=state)


class StaticDecoding:
    """A model as a decoding session sees it, with static caches and a compiled one-token step.

    Attribute access falls through to the wrapped model (``head``, ``ctx``, ``parameters``...).
    ``init_state`` returns a :class:`StaticKVCache` (reused between calls when the batch size and
    capacity repeat, so a compiled step keeps its graph); calling it with a static state and one new
    token per row runs the compiled step when ``compile`` is on.
    """

    def __init__(self, model, *, compile: bool = False, mode: str | None = None, backend: str = "inductor"):
        self.model = model
        self.compile = compile
        self.mode = mode
        self.backend = backend
        self.compiled_calls = 0
        """How many one-token steps ran through the compiled step (tests and benchmarks read it)."""
        self._cache: StaticKVCache | None = None
        self._compiled = None

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def init_state(self, batch_size: int, capacity: int = 256) -> StaticKVCache:
        capacity = -(-max(capacity, 1) // CAPACITY_QUANTUM) * CAPACITY_QUANTUM
        cache = self._cache
        reusable = (cache is not None and cache.batch_size == batch_size and cache.capacity == capacity and cache.k[0].dtype == self._dtype()
                    and cache.device == self._device() and cache.valid.is_inference() == torch.is_inference_mode_enabled())
        if reusable:
            cache.reset()
            return cache
        template = self.model.init_state(batch_size, 1)
        policy = getattr(template, "policy", None)
        if policy is not None and not getattr(policy, "static", False):
            raise ConfigError(f"cache=static is not available with cache policy '{policy.name}': it evicts or retrieves entries, so the "
                              f"cache cannot keep fixed shapes; use cache=dynamic (or cache_policy: full)", path="generate.cache")
        if type(template) is not KVCache:
            raise ConfigError(f"cache=static is not available: the backbone's state is a {type(template).__name__}, not the core KVCache; use cache=dynamic", path="generate.cache")
        k = template.k[0]
        cache = StaticKVCache(template.n_layers, batch_size, k.shape[1], k.shape[3], capacity, device=k.device, dtype=k.dtype, kv_source=template.kv_source)
        if self.compile:
            cache.mark_static()
        self._cache = cache
        return cache

    def _device(self):
        return next(self.model.parameters()).device

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def __call__(self, ids, *, pattern=None, state=None, valid=None):
        if not (self.compile and isinstance(state, StaticKVCache) and ids.shape[1] == 1 and valid is None):
            return self.model(ids, pattern=pattern, state=state, valid=valid)
        if self._compiled is None:
            mode = self.mode if self.mode is not None else default_mode(ids.device) if self.backend == "inductor" else None
            self._compiled = torch.compile(_step, mode=mode, backend=self.backend, dynamic=False, fullgraph=True)
        state.reserve(1)  # the host-side bookkeeping stays outside the compiled region
        if ids.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        self.compiled_calls += 1
        out = self._compiled(self.model, ids, state, pattern)
        return out.clone()  # a CUDA graph overwrites its outputs at the next replay
