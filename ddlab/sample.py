"""Alias of :mod:`ddlab.text.generate` (text generation; the samplers are :mod:`ddlab.sampling`),
so that ``python -m ddlab.sample`` keeps working (lesson 9)."""

from .text.generate import *  # noqa: F401,F403
from .text.generate import main

if __name__ == "__main__":
    main()
