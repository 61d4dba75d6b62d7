"""Per-kind conformance checks (see :mod:`genloom.testing`)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from genloom.core.context import BuildContext
from genloom.core.pattern import CAUSAL


def _registry(registry=None):
    from genloom.core.plugins import get_registry

    return registry or get_registry()


def build(kind: str, node, values: dict[str, Any] | None = None, registry=None, seed: int = 0):
    """Build one component in a context holding ``values`` (e.g. vocab_size, d_model)."""
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


def check_tokenizer(node, samples, *, lossless: bool = True, registry=None):
    tok, _ = build("tokenizer", node, registry=registry)
    for s in samples:
        ids = tok.encode(s)
        assert all(0 <= int(i) < tok.vocab_size for i in ids), "token id outside the vocabulary"
        if lossless:
            back = tok.decode(ids)
            expect = s.decode("utf-8", errors="replace") if isinstance(s, bytes) and isinstance(back, str) else s
            assert back == expect, f"decode(encode(x)) != x for {s!r}"
    return tok


def check_backbone(node, *, d_model: int | None = None, batch: int = 2, length: int = 11, chunks=(1, 3, 2, 5), tol: float = 1e-5, incremental: bool = True, pattern=CAUSAL, registry=None, values=None):
    """Contract of a backbone; builds in float64 so that equivalences are tight."""
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
    assert h.grad is not None and torch.isfinite(h.grad).all()
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
        assert state.lengths.tolist() == [length] * batch
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
    return m


def check_head(node, *, vocab_size: int = 37, d_model: int = 16, registry=None):
    vals = {"vocab_size": vocab_size, "d_model": d_model}

    def make(seed):
        return build("head", node, vals, registry, seed)[0]

    head, _ = _check_module_basics(make, None)
    ids = torch.randint(0, vocab_size, (2, 5))
    h = head.embed(ids)
    assert h.shape == (2, 5, d_model), f"embed gave {tuple(h.shape)}"
    out = head(h)
    loss = head.loss(out, ids)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in head.parameters())
    tok = head.sample(out[:, -1].detach(), torch.Generator().manual_seed(0))
    assert ((tok >= 0) & (tok < vocab_size)).all()
    return head


def tiny_model(config_path=None, overrides=None, base: dict | None = None, registry=None, data: bool = False):
    """Assemble a (tiny) model from a config file and/or a dict, without loading data by default."""
    from genloom.core import config as config_mod
    from genloom.core.model import assemble

    cfg = config_mod.compose(config_path, overrides, base=base)
    validated = config_mod.validate(cfg, _registry(registry))
    return assemble(validated, _registry(registry), data=data)


def check_objective(built, batch: dict):
    out = built.model.loss(batch)
    loss = out["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss), f"loss must be a finite scalar, got {loss}"
    loss.backward()
    grads = [p.grad for p in built.model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the model"
    return out


def check_decoder(built, decoder_node, prompts=((1, 2, 3), (4, 5)), max_new_tokens: int = 6, seed: int = 0):
    from genloom.core.generation import run

    vocab = built.ctx.vocab_size
    dec = built.ctx.build("decoder", decoder_node, path="decoder")
    a = run(built.model, [list(p) for p in prompts], dec, max_new_tokens=max_new_tokens, processors=built.processors, seed=seed)
    b = run(built.model, [list(p) for p in prompts], built.ctx.build("decoder", decoder_node), max_new_tokens=max_new_tokens, processors=built.processors, seed=seed)
    assert a.ids == b.ids, "a seeded run does not reproduce"
    for seq in a.ids:
        assert len(seq) <= max_new_tokens
        assert all(0 <= t < vocab for t in seq), f"token outside the vocabulary in {seq}"
    return a


def check_kernel(op: str, backend: str, *args, atol: float = 1e-5, rtol: float = 1e-4, grad: bool = True, **kwargs):
    """``backend`` agrees with ``reference`` on these inputs (values, and gradients if ``grad``)."""
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
    for r, g in zip(ref, got):
        if torch.is_tensor(r):
            torch.testing.assert_close(g.float(), r.float(), atol=atol, rtol=rtol)
    for r, g in zip(ref_g, got_g):
        torch.testing.assert_close(g.float(), r.float(), atol=atol * 10, rtol=rtol * 10)
    return got


def check_model_config(config_path=None, overrides=None, base=None, batch=None):
    """Assemble from a config and check the objective on ``batch`` (or a batch from the data set)."""
    built = tiny_model(config_path, overrides, base, data=batch is None)
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
