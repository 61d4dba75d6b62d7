"""The conformance kit: checks a component against its kind's contract.

A pytest plugin (entry point ``pytest11``) that third-party authors use on their own components::

    from genloom.testing import check_backbone, check_decoder

    def test_my_backbone():
        check_backbone({"name": "my-backbone", "d_model": 32})

Each ``check_*`` builds the component from a config node through the registry (so it also
checks the record, the config dataclass and the factory) and asserts the contract:

- every kind: builds from its config; deterministic under a seed; ``state_dict`` round trip;
- tokenizer: ids stay in the vocabulary; decode(encode(x)) round-trips where the tokenizer is lossless;
- backbone: shape and dtype preserved; gradients reach every parameter; full forward equals
  incremental decoding (token by token and in uneven chunks); rollback and snapshot/restore;
- head: embed/logits shapes; loss is a scalar with gradients; samples stay in the vocabulary;
- objective: loss is a finite scalar with gradients;
- decoder: output stays in the vocabulary; a seeded run reproduces exactly;
- kernel: the backend agrees with the op's ``reference`` backend.

``train_briefly`` trains a tiny model with data for a few hundred reproducible steps (tests and
benchmarks that need a trained model). ``exact_continuations`` enumerates a tiny model's exact continuation distribution, the reference
for testing that a decoder preserves the target distribution (speculative sampling, SpecTr).
"""

from __future__ import annotations

from genloom.testing.checks import (  # noqa: F401
    build,
    check_backbone,
    check_decoder,
    check_head,
    check_kernel,
    check_model_config,
    check_objective,
    check_tokenizer,
    exact_continuations,
    tiny_model,
    train_briefly,
)

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture
    def genloom_registry():
        """The process-wide genloom registry (entry-point plugins loaded)."""
        from genloom.core.plugins import get_registry

        return get_registry()

    def pytest_configure(config):
        config.addinivalue_line("markers", "gpu: needs CUDA; skipped cleanly without a GPU")
        config.addinivalue_line("markers", "slow: long tests")
