"""Alias of :mod:`ddlab.text.evaluate`, so that ``python -m ddlab.evaluate`` keeps working
(lesson 9)."""

from .text.evaluate import *  # noqa: F401,F403
from .text.evaluate import main

if __name__ == "__main__":
    main()
