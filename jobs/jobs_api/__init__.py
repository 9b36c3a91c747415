"""The Jobs API (seed 000): ``/jobs…`` with the ``{success, data}`` envelope."""
