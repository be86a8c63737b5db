"""`python -m engine.journal.sqlite DB`: the journal's writer process (see `writer`)."""

from engine.journal.sqlite.writer import main

main()
