"""The checks that enforce the API's limits (`neuralir.v1.limits`) on incoming requests."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from neuralir.server.errors import InvalidArgument

# Time budget of a search whose caller set no deadline (seconds): bounds every downstream
# call, so a stalled stage cannot hold a search, or a graceful drain, forever.
DEFAULT_SEARCH_DEADLINE_S = 60.0


def check_text(field: str, text: str, max_chars: int) -> None:
    if not text or not text.strip():
        raise InvalidArgument(field, "must be a non-empty text")
    if len(text) > max_chars:
        raise InvalidArgument(
            field, f"is {len(text)} characters, the limit is {max_chars}: shorten it"
        )


def check_count(field: str, count: int, maximum: int) -> None:
    if count == 0:
        raise InvalidArgument(field, "must hold at least one item")
    if count > maximum:
        raise InvalidArgument(field, f"holds {count} items, the limit is {maximum} per call")


def check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field, f"is {value}, must be between {low} and {high}")


def check_unique(field_template: str, ids: Sequence[str]) -> None:
    """Ids must be non-empty and unique; field_template names one, e.g. "passages[{}].id"."""
    seen: set[str] = set()
    for index, value in enumerate(ids):
        if not value:
            raise InvalidArgument(field_template.format(index), "must be a non-empty id")
        if value in seen:
            raise InvalidArgument(
                field_template.format(index), f"duplicate id {value!r}: ids must be unique"
            )
        seen.add(value)


def check_weight(field: str, value: float) -> None:
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise InvalidArgument(field, f"is {value}, must be a number between 0 and 1")


_FLOAT_TYPES = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)


@functools.cache
def _holds_floats(descriptor: Descriptor) -> bool:
    """Whether a message type has a float field anywhere below it (recursion guarded)."""
    pending, seen = [descriptor], {descriptor}
    while pending:
        for field in pending.pop().fields:
            if field.type in _FLOAT_TYPES:
                return True
            child = field.message_type
            if child is not None and child not in seen:
                seen.add(child)
                pending.append(child)
    return False


def check_finite_floats(message: Message, prefix: str = "") -> None:
    """Refuses NaN and ±inf in every float field set anywhere in a request, nested and
    repeated messages included, naming the field as `passages[3].first_stage_score`.

    Walks the descriptors rather than a list of fields, so a float field added to the proto
    is checked without anyone remembering to. Runs on every request: message types without
    float fields are skipped (cached per type), and a repeated float field (an embedding) is
    checked in one numpy pass, looking for the index only when it fails."""
    if not _holds_floats(message.DESCRIPTOR):
        return
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type in _FLOAT_TYPES:
            if not field.is_repeated:
                if not math.isfinite(value):
                    raise InvalidArgument(name, f"is {value}: must be a finite number")
                continue
            values = np.asarray(value, dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                index = int(bad[0])
                raise InvalidArgument(
                    f"{name}[{index}]", f"is {values[index]}: must be a finite number"
                )
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                for index, item in enumerate(value):
                    check_finite_floats(item, f"{name}[{index}].")
            else:
                check_finite_floats(value, f"{name}.")
