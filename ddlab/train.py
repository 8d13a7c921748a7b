"""Alias of :mod:`ddlab.text.train` (and of the run-folder helpers of :mod:`ddlab.text.checkpoint`
that it used to hold), so that ``python -m ddlab.train`` keeps working (lesson 9)."""

from .text.checkpoint import *  # noqa: F401,F403
from .text.train import *  # noqa: F401,F403
from .text.train import main

if __name__ == "__main__":
    main()
