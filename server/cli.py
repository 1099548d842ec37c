"""`neuralir serve all|encoder|index|rerank|search`: the server's own subcommand."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from neuralir.server.settings import SERVICES, add_server_arguments

log = logging.getLogger("neuralir")


def register(commands: Any) -> None:
    """Adds `serve` to the `neuralir` command's subparsers."""
    serve = commands.add_parser("serve", help="run services (all in one process, or one stage)")
    serve.add_argument("stage", choices=("all", *SERVICES))
    serve.add_argument("--port-file", help="write the bound port here (useful with --port 0)")
    add_server_arguments(serve)
    serve.set_defaults(func=serve_command)


def _write_port_file(path: Path, port: int) -> None:
    """Written atomically: a watcher never reads a half-written port."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)


def serve_command(args: argparse.Namespace) -> int:
    from neuralir.index.format import IndexLoadError
    from neuralir.models.manifest import ManifestError
    from neuralir.server.app import build_server
    from neuralir.server.logs import configure_logging
    from neuralir.server.settings import settings_from_args
    from neuralir.server.wiring import SettingsError

    services = SERVICES if args.stage == "all" else (args.stage,)
    settings = settings_from_args(args, services)
    configure_logging(settings.log_format)
    log.info("settings", extra={"fields": {"settings": settings.describe()}})

    async def run() -> None:
        server, port = build_server(settings)
        if args.port_file:
            _write_port_file(Path(args.port_file), port)
        await server.serve_until_signal()

    try:
        asyncio.run(run())
    except (IndexLoadError, ManifestError, SettingsError) as exc:
        # A model or index that cannot be served is a setup error: say why, no traceback.
        log.error("cannot start %s: %s", args.stage, exc)
        return 1
    return 0
