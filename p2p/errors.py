"""The one error type the engine raises for bad edit input.

The node layer turns it into a message that names the node and the input.
"""

__all__ = ["P2PError"]


class P2PError(ValueError):
    """Input that cannot be turned into a Prompt-to-Prompt edit (unknown word, bad syntax, ...)."""
