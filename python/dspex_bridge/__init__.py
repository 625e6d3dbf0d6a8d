"""dspex_bridge: the Python side of dspex.

A dspex worker process runs ``python -m dspex_bridge --mode pool-worker --worker-id ID``. It
speaks a length-prefixed JSON protocol with the Rust host, builds and runs DSPy programs, and
serves user commands registered with :func:`command`::

    from dspex_bridge import command

    @command
    def word_count(args):
        return {"words": len(args["text"].split())}

Importing this package is cheap: DSPy is only imported by the first DSPy command.
"""

from .registry import command

__all__ = ["__version__", "command"]

__version__ = "0.1.0"
