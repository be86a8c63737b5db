"""Built-in zoomrules action plugins.

Each module here is an ordinary pluggy plugin: it imports only
`engine.plugin`, the public API a third-party plugin uses, and registers
through the same `zoomrules` entry points.
"""
