"""``python -m hybrid.evaluate``: see :mod:`hybrid.evaluate.cli`."""

from hybrid.evaluate.cli import main

if __name__ == "__main__":
    main()
