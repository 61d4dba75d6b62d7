"""Per-kind conformance checks (see :mod:`genloom.testing`)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from genloom.core.context import BuildContext
from genloom.core.pattern import CAUSAL


def _keeps_rng(fn):
    """Run ``fn`` under ``torch.random.fork_rng`` (CPU): the kit seeds what it builds and draws, and
    hands the caller's global random state back unchanged."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return wrapper


def _registry(registry=None):
    from genloom.core.plugins import get_registry

    return registry or get_registry()


@_keeps_rng
def build(kind: str, node, values: dict[str, Any] | None = None, registry=None, seed: int = 0):
    """Build one component of ``kind`` from ``node`` (a name or ``{name: ..., <fields>}``) through the
    registry, in a fresh :class:`~genloom.core.context.BuildContext` holding ``values`` (what earlier
    components would publish: ``vocab_size``, ``d_model``...). The node is validated and its config's
    ``bind(ctx)`` runs first; parameters are drawn under ``torch.manual_seed(seed)`` and the global
    random state is given back. Returns ``(component, ctx)``."""
    reg = _registry(registry)
    ctx = BuildContext(reg, values=values or {})
    torch.manual_seed(seed)
    return ctx.build(kind, node, path=kind), ctx


def _params_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _check_module_basics(make, inputs_fn):
    m1, m2 = make(0), make(0)
    assert _params_equal(m1, m2), "building twice with the same seed gave different parameters"
    m3 = make(1)
    m3.load_state_dict(copy.deepcopy(m1.state_dict()))
    assert _params_equal(m1, m3), "state_dict round trip changed parameters"
    return m1, m3


@_keeps_rng
def check_tokenizer(node, samples, *, lossless: bool = True, registry=None):
    """Build the tokenizer ``node``; every sample's ids lie in ``[0, vocab_size)``; with ``lossless``,
    ``decode(encode(x)) == x`` (bytes samples compare as UTF-8 text when ``decode`` returns str)."""
    tok, _ = build("tokenizer", node, registry=registry)
    for s in samples:
        ids = tok.encode(s)
        bad = [int(i) for i in ids if not 0 <= int(i) < tok.vocab_size]
        assert not bad, f"encode({s!r}) gave ids outside the vocabulary of {tok.vocab_size}: {bad[:5]}"
        if lossless:
            back = tok.decode(ids)
            expect = s.decode("utf-8", errors="replace") if isinstance(s, bytes) and isinstance(back, str) else s
            assert back == expect, f"decode(encode(x)) != x for {s!r}"
    return tok


@_keeps_rng
def check_backbone(node, *, d_model: int | None = None, batch: int = 2, length: int = 11, chunks=(1, 3, 2, 5), tol: float = 1e-5, incremental: bool = True, pattern=CAUSAL, registry=None, values=None):
    """Check a backbone against its contract, in float64 so that equivalences are tight.

    ``node`` is the backbone's config node; ``values`` (and ``d_model``) are put in the build
    context first; ``pattern`` is the attention pattern to run it with. Always: builds; the same
    seed gives the same parameters; ``state_dict`` round trip; shape and dtype preserved; eval-mode
    forward deterministic; gradients reach every parameter. With ``incremental`` (the backbone has
    a :class:`~genloom.core.state.State`): full forward == token-by-token == uneven ``chunks``
    (within ``tol``); ``state.lengths`` counts consumed tokens; rollback and snapshot/restore then
    re-advance; a left-padded prefill (``valid`` False at the padding, garbage there) gives each
    sequence exactly its unpadded outputs and lengths; ``state.reorder(index)`` continues every row
    from the sequence it selected. Returns the built backbone.
    """
    vals = dict(values or {})
    if d_model is not None:
        vals["d_model"] = d_model

    def make(seed):
        torch.manual_seed(seed)
        m, ctx = build("backbone", node, vals, registry, seed)
        return m.double()

    m, m_copy = _check_module_basics(make, None)
    D = build("backbone", node, vals, registry)[1].get("d_model", d_model)
    assert D is not None, "the backbone's config must publish d_model (bind) or pass d_model="
    torch.manual_seed(1)
    h = torch.randn(batch, length, D, dtype=torch.float64, requires_grad=True)
    m.eval()
    m_copy.eval()
    out = m(h, pattern=pattern)
    assert out.shape == h.shape and out.dtype == h.dtype, f"backbone changed shape/dtype: {tuple(h.shape)} -> {tuple(out.shape)}"
    assert torch.allclose(out, m_copy(h, pattern=pattern)), "a copy with the loaded state_dict gives different outputs"
    assert torch.equal(out, m(h, pattern=pattern)), "two forward passes in eval mode differ"
    out.square().sum().backward()
    assert h.grad is not None and bool(torch.isfinite(h.grad).all()), "the gradient of the input is missing or not finite"
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None)]
    assert not dead, f"no gradient reaches {dead[:5]}"
    if not incremental:
        return m
    with torch.no_grad():
        full = m(h.detach(), pattern=pattern)
        # token by token
        state = m.init_state(batch, 4, device=h.device, dtype=h.dtype)
        steps = torch.cat([m(h[:, i : i + 1].detach(), pattern=pattern, state=state) for i in range(length)], 1)
        err = (steps - full).abs().max().item()
        assert err < tol, f"full forward != token-by-token decoding (max error {err:.2e})"
        assert state.lengths.tolist() == [length] * batch, f"state.lengths is {state.lengths.tolist()} after {length} tokens per sequence"
        # uneven chunks
        state = m.init_state(batch, 4, device=h.device, dtype=h.dtype)
        parts, i, c = [], 0, 0
        while i < length:
            n = chunks[c % len(chunks)]
            parts.append(m(h[:, i : i + n].detach(), pattern=pattern, state=state))
            i, c = i + n, c + 1
        err = (torch.cat(parts, 1) - full).abs().max().item()
        assert err < tol, f"full forward != chunked incremental decoding (max error {err:.2e})"
        # rollback within the last advance, then re-advance
        state = m.init_state(batch, 4, device=h.device, dtype=h.dtype)
        cut = length - 3
        m(h[:, :cut].detach(), pattern=pattern, state=state)
        snap = state.snapshot()
        m(h[:, cut:].detach(), pattern=pattern, state=state)
        state.rollback(cut)
        again = m(h[:, cut:].detach(), pattern=pattern, state=state)
        err = (again - full[:, cut:]).abs().max().item()
        assert err < tol, f"rollback then re-advance differs from straight decoding (max error {err:.2e})"
        state.restore(snap)
        again = m(h[:, cut:].detach(), pattern=pattern, state=state)
        err = (again - full[:, cut:]).abs().max().item()
        assert err < tol, f"restore(snapshot) then re-advance differs (max error {err:.2e})"
        _check_padding_and_reorder(m, h.detach(), pattern, tol)
    return m


def _check_padding_and_reorder(m, h, pattern, tol):
    """Left-padded prefill honours ``valid``; ``reorder`` selects rows (see :func:`check_backbone`)."""
    B, L, D = h.shape
    if L < 3:
        return
    pads = [(2 * b + 1) % (L - 1) for b in range(B)]  # different padding per row (row 0: one pad token)
    real = [L - p for p in pads]
    torch.manual_seed(2)
    padded = 10 * torch.randn(B, L, D, dtype=h.dtype)  # garbage at the padding
    valid = torch.zeros(B, L, dtype=torch.bool)
    for b, p in enumerate(pads):
        padded[b, p:] = h[b, : real[b]]
        valid[b, p:] = True
    alone = [m(h[b : b + 1, : real[b]], pattern=pattern)[0] for b in range(B)]
    state = m.init_state(B, 4, device=h.device, dtype=h.dtype)
    out = m(padded, pattern=pattern, state=state, valid=valid)
    for b in range(B):
        err = (out[b, pads[b]:] - alone[b]).abs().max().item()
        assert err < tol, (f"a left-padded prefill (valid=False at {pads[b]} padding positions of row {b}) gives outputs that differ from "
                           f"the unpadded sequence by {err:.2e}: padding must not influence real tokens nor shift their positions (is `valid` ignored?)")
    assert state.lengths.tolist() == real, f"after a padded prefill state.lengths is {state.lengths.tolist()}, expected the real tokens per row {real} (padding is not counted)"
    # reorder: row i continues the sequence of old row index[i] (beam search)
    index = torch.arange(B - 1, -1, -1)
    if B > 2:
        index[-1] = index[0]  # a duplicated row as well as a reversal
    state.reorder(index)
    assert state.lengths.tolist() == [real[int(j)] for j in index], f"after reorder({index.tolist()}) state.lengths is {state.lengths.tolist()}, expected {[real[int(j)] for j in index]}"
    nxt = torch.randn(B, 1, D, dtype=h.dtype)
    step = m(nxt, pattern=pattern, state=state)
    for i, j in enumerate(index.tolist()):
        expect = m(torch.cat([h[j : j + 1, : real[j]], nxt[i : i + 1]], 1), pattern=pattern)[0, -1]
        err = (step[i, 0] - expect).abs().max().item()
        assert err < tol, f"after state.reorder({index.tolist()}) row {i} should continue old row {j}, but its next output differs by {err:.2e} (is reorder wrong?)"


@_keeps_rng
def check_head(node, *, vocab_size: int = 37, d_model: int = 16, registry=None):
    """Build the head ``node`` with ``vocab_size`` and ``d_model`` in the context; same seed, same
    parameters; state_dict round trip; ``embed`` gives (B, L, d_model); ``loss`` is a finite scalar
    with gradients; ``sample`` stays in the vocabulary. Returns the head."""
    vals = {"vocab_size": vocab_size, "d_model": d_model}

    def make(seed):
        return build("head", node, vals, registry, seed)[0]

    head, _ = _check_module_basics(make, None)
    ids = torch.randint(0, vocab_size, (2, 5))
    h = head.embed(ids)
    assert h.shape == (2, 5, d_model), f"embed gave {tuple(h.shape)}"
    out = head(h)
    loss = head.loss(out, ids)
    assert loss.dim() == 0 and bool(torch.isfinite(loss)), f"head.loss must be a finite scalar, got {loss}"
    loss.backward()
    assert any(p.grad is not None for p in head.parameters()), "no gradient reaches the head's parameters from its loss"
    tok = head.sample(out[:, -1].detach(), torch.Generator().manual_seed(0))
    assert bool(((tok >= 0) & (tok < vocab_size)).all()), f"head.sample gave tokens outside the vocabulary of {vocab_size}: {tok.tolist()}"
    return head


def tiny_model(config_path=None, overrides=None, base: dict | None = None, registry=None, data: bool = False, seed: int | None = None):
    """Assemble a (tiny) model from a config file and/or a dict and ``key=value`` overrides.

    Returns the :class:`~genloom.core.model.Built` of :func:`~genloom.core.model.assemble`:
    ``.model`` (the :class:`~genloom.core.model.GenerativeModel`, in training mode), ``.ctx`` (the
    build context: ``vocab_size``, ``d_model``, ``eos_id``...), ``.decoder`` (the config's decoder,
    or None), ``.processors``, ``.declared`` (plugin-declared kinds' nodes) and ``.data`` (the data
    source, built only with ``data=True``). The tokenizer is not fitted on data unless ``data``.
    Initial weights come from the global random state, or from ``seed`` when given (then the global
    state is given back unchanged).
    """
    from genloom.core import config as config_mod
    from genloom.core.model import assemble

    cfg = config_mod.compose(config_path, overrides, base=base)
    validated = config_mod.validate(cfg, _registry(registry))
    if seed is None:
        return assemble(validated, _registry(registry), data=data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return assemble(validated, _registry(registry), data=data)


@_keeps_rng
def train_briefly(built, steps: int, *, lr: float = 3e-3, batch_size: int = 64, seed: int = 0, clip: float = 1.0):
    """Train a :func:`tiny_model` built with ``data=True`` for ``steps`` optimizer steps on its
    training split (AdamW without weight decay, a one-cycle schedule with 10% warm-up, gradients
    clipped to ``clip``; shuffling and noise drawn from ``seed``; the global random state is given
    back), then put it in eval mode. The
    short, reproducible training run of property tests and benchmarks that need a trained model;
    returns ``built``."""
    model = built.model
    train = built.data.load("train", model.tokenizer, built.ctx)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=getattr(built.data, "collate", None),
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    torch.manual_seed(seed)
    model.train()
    step = 0
    while step < steps:
        for batch in loader:
            loss = model.loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            schedule.step()
            step += 1
            if step >= steps:
                break
    model.eval()
    return built


@_keeps_rng
def check_objective(built, batch: dict):
    """``built.model.loss(batch)`` (``built`` from :func:`tiny_model`) returns ``{"loss": finite scalar, ...}``
    and gradients reach the model. Returns the loss dict."""
    out = built.model.loss(batch)
    loss = out["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss), f"loss must be a finite scalar, got {loss}"
    loss.backward()
    grads = [p.grad for p in built.model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the model"
    return out


@_keeps_rng
def check_decoder(built, decoder_node, prompts=((1, 2, 3), (4, 5)), max_new_tokens: int = 6, seed: int = 0):
    """Build ``decoder_node`` in ``built.ctx`` (``built`` from :func:`tiny_model`) and run it twice on
    ``prompts`` (lists of ids, batched with left padding) under ``seed``: the runs agree, every
    sequence has at most ``max_new_tokens`` tokens, all in the vocabulary. Returns the first
    :class:`~genloom.core.generation.GenerationResult`."""
    from genloom.core.generation import run

    vocab = built.ctx.vocab_size
    dec = built.ctx.build("decoder", decoder_node, path="decoder")
    a = run(built.model, [list(p) for p in prompts], dec, max_new_tokens=max_new_tokens, processors=built.processors, seed=seed)
    b = run(built.model, [list(p) for p in prompts], built.ctx.build("decoder", decoder_node), max_new_tokens=max_new_tokens, processors=built.processors, seed=seed)
    assert a.ids == b.ids, "a seeded run does not reproduce"
    for seq in a.ids:
        assert len(seq) <= max_new_tokens, f"a sequence has {len(seq)} tokens, more than max_new_tokens={max_new_tokens}"
        assert all(0 <= t < vocab for t in seq), f"token outside the vocabulary in {seq}"
    return a


@_keeps_rng
def check_kernel(op: str, backend: str, *args, atol: float = 1e-5, rtol: float = 1e-4, grad: bool = True, **kwargs):
    """Backend ``backend`` of ``op`` agrees with the op's ``reference`` backend on ``args``/``kwargs``
    (values within ``atol``/``rtol``, and input gradients within ten times that if ``grad``)."""
    from genloom.core import kernels

    def run_with(name):
        inputs = [a.detach().clone().requires_grad_(grad and a.is_floating_point()) if torch.is_tensor(a) else a for a in args]
        with kernels.use(op, name) as impl:
            out = impl(*inputs, **kwargs)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        grads = []
        if grad:
            total = sum(o.float().sum() for o in outs if torch.is_tensor(o) and o.requires_grad)
            if torch.is_tensor(total):
                total.backward()
                grads = [i.grad for i in inputs if torch.is_tensor(i) and i.grad is not None]
        return outs, grads

    ref, ref_g = run_with("reference")
    got, got_g = run_with(backend)
    for i, (r, g) in enumerate(zip(ref, got)):
        if torch.is_tensor(r):
            torch.testing.assert_close(g.float(), r.float(), atol=atol, rtol=rtol, msg=lambda m, i=i: f"{op}/{backend} output {i} differs from the reference: {m}")
    for i, (r, g) in enumerate(zip(ref_g, got_g)):
        torch.testing.assert_close(g.float(), r.float(), atol=atol * 10, rtol=rtol * 10, msg=lambda m, i=i: f"{op}/{backend} gradient of input {i} differs from the reference: {m}")
    return got


@_keeps_rng
def check_model_config(config_path=None, overrides=None, base=None, batch=None, registry=None, seed: int = 0):
    """Assemble a whole model from a config file (``config_path``), a dict (``base``) and ``key=value``
    ``overrides`` as :func:`tiny_model` does, under ``seed``, and run :func:`check_objective` on ``batch``
    (a dict as the data set's ``collate`` makes it), or, when ``batch`` is None, on two samples of
    the config's data set (built and loaded then). Returns the ``Built``."""
    built = tiny_model(config_path, overrides, base, registry=registry, data=batch is None, seed=seed)
    if batch is None:
        ds = built.data.load("train", built.model.tokenizer, built.ctx)
        batch = built.data.collate([ds[i] for i in range(min(2, len(ds)))])
    check_objective(built, batch)
    return built


def exact_continuations(model, prompt, length: int, processors=(), vocab: int | None = None) -> dict[tuple, float]:
    """Exact probability of every ``length``-token continuation of ``prompt`` under ``model`` (after
    ``processors``), by enumeration: the reference a distribution-preserving decoder is tested against.
    Only for tiny vocabularies (``vocab ** length`` forward passes)."""
    import itertools

    vocab = vocab or model.ctx.vocab_size
    probs = {}
    for seq in itertools.product(range(vocab), repeat=length):
        total, ids = 1.0, list(prompt)
        for token in seq:
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[:, -1].double()
            for proc in processors:
                logits = proc(logits, torch.tensor([ids]))
            total *= float(torch.softmax(logits, -1)[0, token])
            ids.append(token)
        probs[seq] = total
    return probs
