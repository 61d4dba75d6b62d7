"""Lightning callbacks users can name in the config's ``callbacks`` list."""

from __future__ import annotations

import lightning as L


def build_early_stopping(config, ctx):
    from lightning.pytorch.callbacks import EarlyStopping

    return EarlyStopping(monitor=config.monitor, patience=config.patience, min_delta=config.min_delta, mode="min")


class SampleCallback(L.Callback):
    """Prints a short generated sample after each validation (rank 0)."""

    def __init__(self, prompt: str, max_new_tokens: int):
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        from genloom.core.generation import Decoder, run

        model = pl_module.model
        tok = model.tokenizer
        prompt = tok.encode(self.prompt) if self.prompt else [getattr(tok, "eos_id", 0) or 0]
        res = run(model, [prompt], Decoder(), max_new_tokens=self.max_new_tokens, seed=0, tokenizer=tok)
        text = res.decode()[0]
        print(f"\n[sample @ step {trainer.global_step}] {self.prompt}{text}\n")


def build_sample(config, ctx):
    return SampleCallback(config.prompt, config.max_new_tokens)
