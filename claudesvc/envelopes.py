"""The one factory for the OpenAPI shapes of a family's success envelope.

The Jobs API (seed 000) wraps its answers as ``{"success", "data"}``, the
Process API (seed 002) as ``{"success", "data", "meta"}``. Each family keeps
its own envelope (its ``envelope.py`` renders it and names the extra fields);
this only builds the serializer class the schema shows for one such answer.
"""

from __future__ import annotations

import copy

from rest_framework import serializers


def envelope_schema(
    name: str, data: serializers.Field, *, success: bool = True, **more: serializers.Field
) -> type[serializers.Serializer]:
    """A serializer class ``name`` of ``{"success": <success>, "data": <data>, **more}``.

    ``data`` is a serializer (or field) instance, ``many=True`` for a list;
    ``more`` are the family's further top-level fields (the Process API's ``meta``).
    """
    # DRF orders fields by when they were made: copies made here keep the order
    # of the rendered envelope (success, data, then the rest).
    fields = {"success": serializers.BooleanField(default=success), "data": copy.deepcopy(data)}
    fields.update({key: copy.deepcopy(field) for key, field in more.items()})
    return type(name, (serializers.Serializer,), fields)
