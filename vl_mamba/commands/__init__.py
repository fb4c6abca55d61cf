"""The ``vl-mamba`` subcommands that are programs of their own (chat, eval): each a ``main(argv) -> int``."""
