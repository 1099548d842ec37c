"""Every float field of every request message, at any depth, refuses NaN and ±inf with
INVALID_ARGUMENT naming the field (`passages[1].first_stage_score`), through the real server.

The table of fields is derived from the proto descriptors, not written by hand: a float field
added to any request message, or an RPC added to any service, is tested without anyone
remembering to, and fails here until the server refuses non-finite values in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from reliability import RPCS, rpc
from servers import assert_invalid_argument

from neuralir.v1 import (
    encoder_service_pb2,
    index_service_pb2,
    rerank_service_pb2,
    search_service_pb2,
)

QUERY = "computer information retrieval"
BAD_VALUES = (float("nan"), float("inf"), float("-inf"))
_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
# Repeated messages are walked at this index, so a base request holds two of each (the error
# must name the right element, not just the first).
ELEMENT = 1

# A valid request of each RPC whose request holds a float field somewhere.
BASES: dict[str, Message] = {
    "Rerank": rerank_service_pb2.RerankRequest(
        query=QUERY,
        passages=[
            rerank_service_pb2.Passage(id=f"p{i}", text="a passage about libraries")
            for i in range(ELEMENT + 1)
        ],
    ),
    "Search": search_service_pb2.SearchRequest(query=QUERY, k=3),
    "BatchSearch": search_service_pb2.BatchSearchRequest(
        requests=[search_service_pb2.SearchRequest(query=QUERY, k=3)] * (ELEMENT + 1)
    ),
}

Step = tuple[str, bool]  # field name, repeated


def float_paths(message: Descriptor, path: tuple[Step, ...] = ()) -> Iterator[tuple[Step, ...]]:
    """Every float field reachable from a message type (nested and repeated included)."""
    for field in message.fields:
        step = (*path, (field.name, field.is_repeated))
        if field.type in _FLOATS:
            yield step
        elif field.type == FieldDescriptor.TYPE_MESSAGE and len(path) < 8:
            yield from float_paths(field.message_type, step)


def field_name(path: tuple[Step, ...]) -> str:
    """The name the server must report: `requests[1].blend_weight`."""
    return ".".join(f"{name}[{ELEMENT}]" if repeated else name for name, repeated in path)


def with_value(base: Message, path: tuple[Step, ...], value: float) -> Message:
    request = type(base)()
    request.CopyFrom(base)
    target: Any = request
    for name, repeated in path[:-1]:
        target = getattr(target, name)[ELEMENT] if repeated else getattr(target, name)
    name, repeated = path[-1]
    if repeated:
        values = getattr(target, name)
        while len(values) <= ELEMENT:
            values.append(0.5)
        values[ELEMENT] = value
    else:
        setattr(target, name, value)
    return request


def _request_types() -> dict[str, Descriptor]:
    """Every RPC of the four services -> its request type, from the descriptors."""
    found = {}
    for module in (encoder_service_pb2, index_service_pb2, rerank_service_pb2, search_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found[f"/{service.full_name}/{method.name}"] = method.input_type
    return found


CASES = [
    (name, path, value)
    for name, (method, _, _) in RPCS.items()
    for path in float_paths(_request_types()[method])
    for value in BAD_VALUES
]


def test_the_table_covers_every_rpc_and_float_field() -> None:
    """RPCS (the reliability tests' list) names every RPC the protos declare, and every RPC
    with a float field has a base request to put bad values in."""
    assert {method for method, _, _ in RPCS.values()} == set(_request_types())
    with_floats = {name for name, _, _ in CASES}
    assert with_floats <= set(BASES), f"add a base request for {with_floats - set(BASES)}"
    fields = {field_name(path) for _, path, _ in CASES}
    assert {"passages[1].first_stage_score", "requests[1].fusion_weight"} <= fields


@pytest.fixture(scope="module")
def channel(all_in_one: Any, client: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(all_in_one.address) as ch:
        yield ch


@pytest.mark.parametrize(
    ("rpc_name", "path", "value"),
    CASES,
    ids=[f"{n}-{field_name(p)}-{v}" for n, p, v in CASES],
)
def test_non_finite_floats_are_refused_naming_the_field(
    channel: grpc.Channel, rpc_name: str, path: tuple[Step, ...], value: float
) -> None:
    request = with_value(BASES[rpc_name], path, value)
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, rpc_name)(request, timeout=30)
    assert_invalid_argument(caught.value, field_name(path))


@pytest.mark.parametrize("rpc_name", sorted(BASES))
def test_the_base_requests_are_valid(channel: grpc.Channel, rpc_name: str) -> None:
    """So a refusal above is the bad float's doing, not the base request's."""
    rpc(channel, rpc_name)(BASES[rpc_name], timeout=60)
