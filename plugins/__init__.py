"""Built-in zoomrules action plugins.

Each module here is an ordinary pluggy plugin: it uses exactly the hooks in
`engine.hookspecs` that a third-party plugin would use.
"""
