"""Accelerator kernel plugins: implementations of named ops, each beside a PyTorch reference.

Ops and backends (higher priority wins when usable; config ``kernels: {op: backend}`` pins one):

- ``attention``: ``reference`` (plain PyTorch math), ``sdpa`` (torch's scaled_dot_product_attention),
  ``flex`` (FlexAttention block masks from the pattern's ``allowed``), ``xformers`` (CUDA only,
  detected at run time).
- ``selective_scan``: ``reference`` (step-by-step recurrence), ``chunked`` (PyTorch chunked
  parallel scan), ``triton`` (a Triton kernel; CPU through ``TRITON_INTERPRET=1``).
- ``fft_conv``: ``reference`` (sum over lags), ``fft`` (zero-padded real FFTs), ``chunked``
  (streamed blocks with a buffer of future contributions).
- ``fft_conv_stream``: the decoding path of ``fft_conv``: ``reference`` (direct sum over the
  history) and ``futurefill`` (future buffer, one FFT per block).
- ``linear_recurrence``: ``reference`` (step-by-step recurrence), ``parallel`` (masked decay
  matrix), ``chunkwise`` (parallel inside chunks, recurrent across), ``triton``.
"""

from __future__ import annotations

from genloom.core import hookimpl, records

_REF = "genloom.kernels.attention"


@hookimpl
def genloom_kernels():
    return [
        records.kernel("attention", "reference", f"{_REF}:make_reference", summary="Plain PyTorch attention math; the definition every backend is tested against.", priority=0),
        records.kernel("attention", "flex", f"{_REF}:make_flex", summary="FlexAttention with block masks built from the pattern's allowed().", priority=5),
        records.kernel("attention", "sdpa", f"{_REF}:make_sdpa", summary="torch.nn.functional.scaled_dot_product_attention (is_causal fast path).", priority=10),
        records.kernel("attention", "xformers", f"{_REF}:make_xformers", summary="xformers memory-efficient attention (CUDA; causal and block-diagonal biases).", priority=30),
        records.kernel("selective_scan", "reference", "genloom.kernels.selective_scan:make_reference", summary="Mamba's selective scan as a step-by-step recurrence.", priority=0),
        records.kernel("selective_scan", "chunked", "genloom.kernels.selective_scan:make_chunked", summary="Chunked parallel selective scan in PyTorch.", priority=10),
        records.kernel("selective_scan", "triton", "genloom.kernels.selective_scan:make_triton", summary="Triton selective-scan kernel (CUDA, or CPU with TRITON_INTERPRET=1).", priority=20),
        records.kernel("fft_conv", "reference", "genloom.kernels.fft_conv:make_reference", summary="Causal long convolution as the sum over lags, O(L*K); the definition.", priority=0),
        records.kernel("fft_conv", "chunked", "genloom.kernels.fft_conv:make_chunked", summary="Causal long convolution streamed in blocks (overlap-add buffer of future contributions).", priority=5),
        records.kernel("linear_recurrence", "reference", "genloom.kernels.linear_recurrence:make_reference", summary="Gated linear recurrence h = exp(g) h + k^T v, y = q h, step by step; the definition.", priority=0),
        records.kernel("linear_recurrence", "parallel", "genloom.kernels.linear_recurrence:make_parallel", summary="Gated linear recurrence as masked decay-matrix attention ((QK^T) * D) V, O(L^2).", priority=5),
        records.kernel("linear_recurrence", "chunkwise", "genloom.kernels.linear_recurrence:make_chunkwise", summary="Gated linear recurrence, parallel inside chunks and recurrent across them, O(L).", priority=10),
        records.kernel("linear_recurrence", "triton", "genloom.kernels.linear_recurrence:make_triton", summary="Triton gated-linear-recurrence kernel (real decays; CUDA, or CPU with TRITON_INTERPRET=1).", priority=20),
        records.kernel("fft_conv_stream", "reference", "genloom.kernels.fft_conv:make_stream_reference", summary="Decoding-time causal convolution by the direct sum over the whole history (O(t) per token).", priority=0),
        records.kernel("fft_conv_stream", "futurefill", "genloom.kernels.fft_conv:make_stream_futurefill", summary="FutureFill decoding: future buffer of past blocks' contributions, one FFT per block.", priority=10),
        records.kernel("fft_conv", "fft", "genloom.kernels.fft_conv:make_fft", summary="Causal long convolution by zero-padded real FFTs, O(L log L).", priority=10),
    ]
