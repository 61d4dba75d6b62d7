"""Building blocks shared by the plugins of one family of techniques.

The core (:mod:`genloom.core`) holds the contracts and the runtime every technique uses; code
that only one family shares lives here, one module per topic, so plugins write nothing twice
while the core stays short. The toolkit may import the core; the core never imports the toolkit
(a test enforces it); neither imports a plugin.

A topic whose runtime needs torch keeps the config dataclasses that plugins name in their
records in a torch-free ``<topic>_config`` module, so ``genloom plugins`` and
``genloom components`` stay light.

Topics:

- :mod:`genloom.toolkit.canvas` / :mod:`~genloom.toolkit.canvas_config` -- masked-canvas
  decoding for masked-diffusion decoders (confidence unmasking, prefix commits).
- :mod:`genloom.toolkit.forecasting` / :mod:`~genloom.toolkit.forecasting_heads` /
  :mod:`~genloom.toolkit.forecasting_config` -- the forecasting harness (rolling origins,
  metrics, baselines, forecast files and plots) and the probabilistic forecasting heads.
- :mod:`genloom.toolkit.schedules` -- per-position noise schedules (shared, staircase, lines,
  blocks) and the NELBO they define; :mod:`genloom.toolkit.masking` -- complementary masking.
- :mod:`genloom.toolkit.canvas_cache` -- prefix, finished-block and stale (sub-block) caches for
  masked canvases; :mod:`genloom.toolkit.commit` -- parallel commit rules.
- :mod:`genloom.toolkit.blocks` -- block diffusion adapted from an AR model (shifted read-out,
  [x_t, x_0] pattern, conversion, the block decoder).
- :mod:`genloom.toolkit.draft` / :mod:`~genloom.toolkit.draft_config` -- draft-model loading for
  decoders that draft with a second model (speculative sampling, SpecTr).
- :mod:`genloom.toolkit.acceptance` -- acceptance rules of speculative verification (exact,
  LANTERN's relaxed, GSD's grouped; continuous densities); :mod:`genloom.toolkit.tree` -- token
  trees; :mod:`genloom.toolkit.jacobi` -- speculative Jacobi decoding.
- :mod:`genloom.toolkit.image_ar` / :mod:`~genloom.toolkit.image_ar_config` -- the raster-order
  image AR setting (VQ tokens with class start tokens, its objective, token latents and their
  neighbourhoods).
"""
