"""One module per subcommand; each exposes a `COMMAND` (`engine.commands.base.Command`).

`engine.cli` lists them; they share `base` (exit statuses, config paths)
and `common` (loading rules, reading events), never `engine.cli` itself.
"""
