"""grpc.health.v1 with List: grpcio-health-checking's asyncio servicer implements Check and
Watch only, and its List (part of the current health proto, called by newer health clients
and Kubernetes tooling) is the generated default, which raises NotImplementedError."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2


class HealthServicer(health.aio.HealthServicer):
    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Every registered service ("" = the whole server) with its status: a snapshot."""
        response = health_pb2.HealthListResponse()
        for service, status in list(self._server_status.items()):
            response.statuses[service].status = status
        return response
