"""The Process API (seed 002): ``/api/v1/claude/…`` with the ``{success, data, meta}``
envelope, and its WebSocket face (``claude:*`` events)."""
