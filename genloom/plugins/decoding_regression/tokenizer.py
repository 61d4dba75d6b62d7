"""The IEEE-like number tokenizer: ``[sign, exponent, d_1 .. d_K]``.

Vocabulary: ids 0-9 are the digits, 10 is ``+``, 11 is ``-``, and ``12 + (e + max_exponent)`` is
the exponent e. A number y != 0 is written with e = floor(log10 |y|) and the mantissa
m = round(|y| / 10^e * 10^(K-1)) (K digits, leading digit 1-9; a mantissa rounded up to 10^K
carries into the exponent). Magnitudes below 10^-max_exponent are written as 0 (``+``, the
lowest exponent, K zeros); magnitudes that need an exponent above max_exponent are an error.
"""

from __future__ import annotations

import math

import torch

from genloom.core.model import Tokenizer
from genloom.plugins.decoding_regression import NumberTokenizerConfig

PLUS, MINUS, FIRST_EXPONENT = 10, 11, 12


class NumberTokenizer(Tokenizer):
    eos_id = None

    def __init__(self, mantissa_digits: int = 3, max_exponent: int = 4):
        self.digits, self.max_exponent = mantissa_digits, max_exponent
        self.vocab_size = FIRST_EXPONENT + 2 * max_exponent + 1
        self.length = mantissa_digits + 2

    def precision(self, y: float) -> float:
        """The largest rounding error of ``encode``/``decode`` at y: half a unit in the last kept digit."""
        if abs(y) < 10.0 ** -self.max_exponent:
            return 10.0 ** -self.max_exponent
        return 0.5 * 10.0 ** (math.floor(math.log10(abs(y))) - self.digits + 1)  # a carry (9.996 -> 10.0) stays inside it

    def encode(self, y: float) -> list[int]:
        y = float(y)
        if not math.isfinite(y):
            raise ValueError(f"the number tokenizer cannot encode {y}")
        sign = MINUS if y < 0 else PLUS
        magnitude = abs(y)
        if magnitude < 10.0 ** -self.max_exponent:
            return [PLUS, FIRST_EXPONENT] + [0] * self.digits
        exponent = math.floor(math.log10(magnitude))
        mantissa = round(magnitude / 10.0 ** exponent * 10 ** (self.digits - 1))
        if mantissa >= 10 ** self.digits:  # 9.996 -> 10.00: carry into the exponent
            mantissa //= 10
            exponent += 1
        if mantissa < 10 ** (self.digits - 1):  # floating-point edge below a power of ten
            mantissa *= 10
            exponent -= 1
        if exponent > self.max_exponent:
            raise ValueError(f"{y} needs exponent {exponent}, above max_exponent={self.max_exponent}")
        if exponent < -self.max_exponent:
            return [PLUS, FIRST_EXPONENT] + [0] * self.digits
        digits = [int(c) for c in str(mantissa).zfill(self.digits)]
        return [sign, FIRST_EXPONENT + exponent + self.max_exponent] + digits

    def decode(self, ids) -> float:
        ids = [int(i) for i in ids]
        sign = -1.0 if ids[0] == MINUS else 1.0
        exponent = ids[1] - FIRST_EXPONENT - self.max_exponent
        mantissa = int("".join(str(d) for d in ids[2:2 + self.digits]))
        return sign * mantissa * 10.0 ** (exponent - self.digits + 1)

    def encode_batch(self, y: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.encode(v) for v in y.reshape(-1).tolist()], dtype=torch.long)

    def decode_batch(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.decode(row) for row in ids.tolist()], dtype=torch.float64)

    def allowed(self) -> torch.Tensor:
        """(length, vocab) mask of the tokens allowed at each position: sign, exponent, digits."""
        mask = torch.zeros(self.length, self.vocab_size, dtype=torch.bool)
        mask[0, [PLUS, MINUS]] = True
        mask[1, FIRST_EXPONENT:] = True
        mask[2:, :10] = True
        return mask


def build(config: NumberTokenizerConfig, ctx=None) -> NumberTokenizer:
    return NumberTokenizer(config.mantissa_digits, config.max_exponent)
