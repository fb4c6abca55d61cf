"""``python -m vl_mamba`` is the ``vl-mamba`` command."""

from vl_mamba.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
