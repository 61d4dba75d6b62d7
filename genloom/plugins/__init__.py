"""Built-in plugins: one sub-package per technique, each registered through the ``genloom``
entry-point group exactly like a third-party plugin."""
