"""claudesvc: the Claude Code CLI behind HTTP."""

__version__ = "1.0.0"
