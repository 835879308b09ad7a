"""``python -m ppl``: see :mod:`ppl.cli` (``python -m ppl --help``)."""
import sys


def main(argv=None):
    from ppl.cli import main as _main

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
