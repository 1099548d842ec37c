"""Encoder over gRPC: the cost of the RPC layer (batch 1, one caller) and dynamic batching
under load (closed loop swept over callers, open loop swept over arrival rates).

Servers run in their own processes (`neuralir serve ...`), the load comes from this process's
grpc.aio client, so the two never share a GIL. In-process and gRPC variants are measured in
interleaved rounds, so a change in machine load hits them alike.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

from neuralir.benchmarks.bench_encode import query_batches
from neuralir.benchmarks.context import BenchContext, ScenarioOutput, run_async
from neuralir.benchmarks.grpc_calls import connect, encode_call, health_call
from neuralir.benchmarks.loadgen import (
    CallReport,
    LoadResult,
    closed_loop,
    closed_loop_sync,
    merge_round,
    open_loop,
)
from neuralir.benchmarks.probe_server import MODES as PROBE_MODES
from neuralir.benchmarks.records import make_run
from neuralir.benchmarks.scenario import Scenario
from neuralir.benchmarks.servers import Deployment, ServerProcess
from neuralir.models.encoder import Encoder
from neuralir.models.session import RuntimeSettings
from neuralir.server.batching import BatchingSettings
from neuralir.server.stages.encoder import EncoderStage

# Server settings overrides (DeploySettings fields); the first is the server default.
DEFAULT_SERVERS: list[dict[str, Any]] = [
    {},
    {"encoder_max_wait_us": 500},
    {"batching": "off"},
]


def _deployments(ctx: BenchContext, configs: list[dict[str, Any]]) -> list[Deployment]:
    deployments = []
    for config in configs:
        ctx.progress(f"starting `serve all` with {ctx.pool.settings(config).label()}")
        deployments.append(ctx.pool.get("all", config))
    return deployments


def _grpc_row(
    scenario: Scenario,
    ctx: BenchContext,
    deployment: Deployment,
    result: LoadResult,
    path: str,
    variant: str,
    batch: int = 1,
) -> dict[str, Any]:
    return make_run(
        scenario=scenario.name,
        stage="encode",
        path=path,
        result=result,
        batch=batch,
        model=ctx.model_name("bi-encoder"),
        quantization="int8",
        threads=deployment.settings.threads(),
        variant=variant,
        batching=deployment.settings.label(),
        encoder_threads=deployment.settings.encoder_threads,
        server_startup_s=round(deployment.startup_s, 2),
    )


# What each probe server isolates (benchmarks/probe_server.py); the variant names the row.
PROBE_VARIANTS = {
    "stored": "probe: Encode returns a stored embedding (RPC + payload, no model)",
    "inline": "probe: model inline in the handler (no batcher, thread hop or interceptors)",
}


def _start_probes(ctx: BenchContext, model_dir: Path, threads: int) -> dict[str, ServerProcess]:
    probes: dict[str, ServerProcess] = {}
    try:
        for mode in PROBE_MODES:
            ctx.progress(f"starting the {mode} probe server")
            probe = ServerProcess(
                f"probe-{mode}",
                ["--model", str(model_dir.absolute()), "--mode", mode, "--threads", str(threads)],
                ctx.work_dir,
                "probe",
                module_args=["neuralir.benchmarks.probe_server"],
            )
            probes[mode] = probe
            probe.wait_port(120)
            probe.wait_ready(60)
    except Exception:
        for probe in probes.values():
            probe.stop()
        raise
    return probes


def run_overhead(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    """Encode, batch 1, one caller: in-process vs `serve all` vs its own process."""
    out = ScenarioOutput()
    rounds = int(scenario.param("rounds", 3))
    slot = scenario.duration_s / rounds
    batches = query_batches(ctx.workload.queries, 1)
    deployments = _deployments(ctx, list(scenario.param("servers", DEFAULT_SERVERS)))
    multiprocess = None
    if scenario.param("multiprocess", True):
        ctx.progress("starting the multi-process deployment")
        multiprocess = ctx.pool.get("multiprocess")
    threads = ctx.pool.base.encoder_threads
    model_dir = ctx.model_dir("bi-encoder", "int8")
    encoder = Encoder(model_dir, RuntimeSettings(intra_op_threads=threads))
    cycle = itertools.cycle(batches)
    probes = _start_probes(ctx, model_dir, threads) if scenario.param("probes", True) else {}

    def in_process() -> CallReport:
        encoder.encode(next(cycle), "query")
        return CallReport()

    results: dict[Any, LoadResult] = {}

    async def batcher_round() -> LoadResult:
        """The server's own path without gRPC: its batcher, event loop -> model thread -> back."""
        stage = EncoderStage(encoder, BatchingSettings())
        await stage.start()
        try:

            async def call() -> CallReport:
                await stage.encode(next(cycle), "query")
                return CallReport()

            return await closed_loop(call, 1, slot, scenario.warmup_s)
        finally:
            await stage.stop()

    async def grpc_round() -> None:
        targets: list[tuple[str, tuple[str, int | str]]] = [
            (d.address, ("grpc", i)) for i, d in enumerate(deployments)
        ]
        if multiprocess is not None:
            targets.append((multiprocess.stage_addresses["encoder"], ("multiprocess", 0)))
        targets += [(probe.address, ("probe", mode)) for mode, probe in probes.items()]
        for address, key in targets:
            client = await connect(address)
            try:
                call = encode_call(client, batches)
                merge_round(results, key, await closed_loop(call, 1, slot, scenario.warmup_s))
                if key == ("grpc", 0):
                    floor = await closed_loop(health_call(client), 1, slot, scenario.warmup_s)
                    merge_round(results, ("health", 0), floor)
            finally:
                await client.close()

    try:
        for round_ in range(rounds):
            ctx.progress(f"grpc overhead: round {round_ + 1}/{rounds}")
            merge_round(
                results, "in_process", closed_loop_sync(in_process, slot, scenario.warmup_s)
            )
            merge_round(results, "batcher", run_async(batcher_round))
            run_async(grpc_round)
    finally:
        for probe in probes.values():
            probe.stop()

    # The floor (the model called directly), then the server's batcher without any RPC.
    for key, variant in (
        ("in_process", "Encoder.encode in-process"),
        ("batcher", "server batcher in-process (no RPC)"),
    ):
        out.runs.append(
            make_run(
                scenario=scenario.name,
                stage="encode",
                path="in_process",
                result=results[key],
                batch=1,
                model=ctx.model_name("bi-encoder"),
                quantization="int8",
                threads={"ort_intra_op": threads},
                variant=variant,
            )
        )
    for i, deployment in enumerate(deployments):
        variant = f"serve all, {deployment.settings.label()}"
        out.runs.append(_grpc_row(scenario, ctx, deployment, results[("grpc", i)], "grpc", variant))
    if multiprocess is not None:
        variant = f"serve encoder (own process), {multiprocess.settings.label()}"
        out.runs.append(
            _grpc_row(
                scenario,
                ctx,
                multiprocess,
                results[("multiprocess", 0)],
                "grpc_multiprocess",
                variant,
            )
        )
    for mode in probes:
        row = _grpc_row(
            scenario, ctx, deployments[0], results[("probe", mode)], "grpc", PROBE_VARIANTS[mode]
        )
        row.update(batching="none (probe server)")
        row.pop("server_startup_s", None)
        out.runs.append(row)
    floor = _grpc_row(
        scenario, ctx, deployments[0], results[("health", 0)], "grpc", "Health.Check (RPC floor)"
    )
    floor.update(stage="health", model="none", quantization="none")
    out.runs.append(floor)
    out.notes.append(
        "Health.Check is the cheapest RPC on the same server and channel: its p50 is the cost "
        "of one Python grpc.aio round trip here, without any model work."
    )
    return out


def run_batching(scenario: Scenario, ctx: BenchContext) -> ScenarioOutput:
    """Encoder over gRPC under load, dynamic batching on vs off: closed and open loop."""
    out = ScenarioOutput()
    configs = list(scenario.param("servers", DEFAULT_SERVERS))
    deployments = _deployments(ctx, configs)
    concurrency = [int(c) for c in scenario.param("concurrency", [1, 4, 16, 64])]
    fractions = [float(f) for f in scenario.param("open_fractions", [0.25, 0.5, 0.75, 0.9, 1.1])]
    rounds = int(scenario.param("rounds", 2))
    batches = query_batches(ctx.workload.queries, 1)
    closed: dict[tuple[int, int], LoadResult] = {}

    async def closed_round() -> None:
        for i, deployment in enumerate(deployments):
            client = await connect(deployment.address)
            try:
                for conc in concurrency:
                    call = encode_call(client, batches)
                    result = await closed_loop(
                        call, conc, scenario.duration_s / rounds, scenario.warmup_s
                    )
                    merge_round(closed, (i, conc), result)
            finally:
                await client.close()

    for round_ in range(rounds):
        ctx.progress(f"batching: closed loop round {round_ + 1}/{rounds}")
        run_async(closed_round)
    for (i, _), result in sorted(closed.items()):
        deployment = deployments[i]
        out.runs.append(
            _grpc_row(
                scenario,
                ctx,
                deployment,
                result,
                "grpc",
                f"serve all, {deployment.settings.label()}",
            )
        )

    async def open_sweep(deployment: Deployment, rates: list[float]) -> list[LoadResult]:
        client = await connect(deployment.address)
        try:
            found = []
            for n, rate in enumerate(rates):
                call = encode_call(client, batches)
                found.append(
                    await open_loop(call, rate, scenario.duration_s, scenario.warmup_s, seed=n)
                )
            return found
        finally:
            await client.close()

    for i, deployment in enumerate(deployments):
        peak = max(closed[(i, c)].throughput_rps for c in concurrency)
        rates = [round(peak * f, 1) for f in fractions if peak * f > 0]
        ctx.progress(f"batching: open loop {deployment.settings.label()} at {rates} req/s")
        for result in run_async(functools.partial(open_sweep, deployment, rates)):
            row = _grpc_row(
                scenario,
                ctx,
                deployment,
                result,
                "grpc",
                f"serve all, {deployment.settings.label()}",
            )
            row["closed_loop_peak_rps"] = round(peak, 1)
            out.runs.append(row)
    out.notes.append(
        "Open-loop rates are fractions of the best closed-loop throughput of the same server "
        f"({', '.join(str(f) for f in fractions)}), so every sweep reaches saturation. Open-loop "
        "latency counts from each request's intended (Poisson) send time; `service_ms` in "
        "results.json is the same from the actual send, `send_lag_ms` the generator's lag."
    )
    for config in configs:  # the default deployment stays up for later scenarios
        if ctx.pool.settings(config) != ctx.pool.base:
            ctx.pool.release("all", config)
    return out
