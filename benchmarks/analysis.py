"""Findings in plain words, computed from the run's own rows (nothing here is hand-typed: a
rerun on another machine explains its own numbers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neuralir.benchmarks.records import ann_qps

Row = dict[str, Any]


def _find(runs: list[Row], predicate: Callable[[Row], bool]) -> Row | None:
    return next((r for r in runs if predicate(r)), None)


def _p50(row: Row) -> float:
    return float(row["latency_ms"]["p50"])


def _encode_row(runs: list[Row], variant: str, batch: int, threads: int) -> Row | None:
    """The in-process encode row of `variant` at this batch size and thread count."""
    return _find(
        runs,
        lambda row: (
            row["scenario"] == "encode"
            and row["stage"] == "encode"
            and row.get("variant") == variant
            and row["batch"] == batch
            and threads in row["threads"].values()
        ),
    )


def _spread(row: Row, lead: str = "", tail: str = "") -> str:
    """`rounds 700-790`: the range of a row's interleaved rounds, when it has several."""
    rounds = row.get("rounds_items_per_s") or []
    if len(rounds) < 2:
        return ""
    return f"{lead}rounds {min(rounds):.0f}-{max(rounds):.0f}{tail}"


def _encode(runs: list[Row]) -> list[str]:
    rows = [r for r in runs if r["scenario"] == "encode" and r["stage"] == "encode"]
    out = []
    for threads in sorted({next(iter(r["threads"].values())) for r in rows}):

        def pick(variant: str, batch: int, t: int = threads) -> Row | None:
            return _encode_row(rows, variant, batch, t)

        size = max(r["batch"] for r in rows)
        one, big = pick("onnx-int8", 1), pick("onnx-int8", size)
        bucketed = pick("onnx-int8-bucketed", size)
        if one and big and big["batch"] > 1:
            gain = big["items_per_s"] / max(one["items_per_s"], 1e-9)
            text = (
                f"- **Encode, {threads} thread(s).** int8 answers one query in "
                f"{_p50(one):.2f} ms p50 ({one['items_per_s']:.0f} queries/s{_spread(one, '; ')}"
                f"); batches of {size} real queries reach {big['items_per_s']:.0f} queries/s "
                f"({_spread(big, '', '; ')}{gain:.2f}x; "
                "the encoder cuts a batch into chunks of similar length, at most 25% padding)"
            )
            if bucketed:
                bucket_gain = bucketed["items_per_s"] / max(one["items_per_s"], 1e-9)
                text += (
                    f", batches of {size} queries pre-sorted by length "
                    f"{bucketed['items_per_s']:.0f} queries/s ({bucket_gain:.2f}x)"
                )
            text += (
                ". The model-side gain of a batch bounds what dynamic batching can add; the rest "
                "it can save is per-request overhead (RPC handling, executor hops)."
            )
            out.append(text)
        torch_one = pick("pytorch-fp32", 1, 1)
        torch_here = pick("pytorch-fp32", 1)
        if threads > 1 and torch_one and torch_here and _p50(torch_here) > 5 * _p50(torch_one):
            out.append(
                f"- **PyTorch with {threads} threads is an outlier.** p50 {_p50(torch_here):.0f} "
                f"ms vs {_p50(torch_one):.1f} ms with 1 thread: with other processes on the second"
                " core (a training job and other work shared this machine), torch's OpenMP workers "
                "wait for each other at every parallel region. The 1-thread ratio is the fair "
                "baseline on this machine; the 2-thread one is shown, not relied on."
            )
    return out


def _grpc(runs: list[Row]) -> list[str]:
    rows = [r for r in runs if r["scenario"] == "grpc_overhead"]
    floor = _find(
        rows,
        lambda r: (
            r["path"] == "in_process" and not r.get("variant", "").startswith("server batcher")
        ),
    )
    batcher = _find(rows, lambda r: r.get("variant", "").startswith("server batcher"))
    health = _find(rows, lambda r: r["stage"] == "health")
    probes = {r["variant"]: r for r in rows if r.get("variant", "").startswith("probe")}
    served = [
        r
        for r in rows
        if r["stage"] == "encode" and r["path"] != "in_process" and r["variant"] not in probes
    ]
    if not (floor and health and served):
        return []
    parts = []
    for row in served:
        server = row.get("server_ms", {}).get("encode", {})
        parts.append(
            f"{row['variant']}: p50 {_p50(row):.3f} ms (+{_p50(row) - _p50(floor):.3f}); the "
            f"server's own encode stage {server.get('p50', 0):.3f} ms, of which "
            f"{server.get('queue_p50', 0):.3f} ms in the batcher's queue"
        )
    return [
        f"- **Where gRPC time goes (batch 1, one caller).** In-process encode: "
        f"{_p50(floor):.3f} ms p50. One bare Python grpc.aio round trip (Health.Check on the same "
        f"channel) costs {_p50(health):.3f} ms p50 by itself. "
        + "; ".join(parts)
        + ". The added time is one Python RPC round trip (client and server both in Python, both "
        "on these 2 cores), the server's hop from its event loop to the model thread and back, "
        "and, with a wait window, the batcher's queue: a lone request waits out the whole window "
        "(server/batching.py `_fill_window` closes it early only when the batch is full), and "
        "asyncio's timer rounds the wait up to whole milliseconds."
        + _grpc_budget(floor, batcher, health, served[0], probes)
    ]


def _grpc_budget(
    floor: Row, batcher: Row | None, health: Row, default: Row, probes: dict[str, Row]
) -> str:
    """The default server's added p50 split by the rows that isolate each part."""
    added = _p50(default) - _p50(floor)
    parts = [added]  # every difference reported, to flag the ones noise made negative
    text = (
        f" Split of the default server's +{added:.3f} ms: a bare round trip {_p50(health):.3f} ms"
    )
    stored = next((r for v, r in probes.items() if "stored" in v), None)
    inline = next((r for v, r in probes.items() if "inline" in v), None)
    if stored is not None:
        parts.append(_p50(stored) - _p50(health))
        text += (
            f" (an Encode that returns a stored embedding, no model: {_p50(stored):.3f} ms, so "
            "the request, the response and its 1.5 KB payload cost "
            f"{parts[-1]:+.3f} ms more than Health.Check)"
        )
    if stored is not None and inline is not None:
        between = _p50(inline) - _p50(stored) - _p50(floor)
        rest = _p50(default) - _p50(inline)
        parts += [between, rest]
        handler = inline.get("server_ms", {}).get("encode", {}).get("p50", 0.0)
        text += (
            f"; the model run inside a server between RPCs instead of back to back in a loop "
            f"{between:+.3f} ms (model inline in a bare handler: {_p50(inline):.3f} ms, of which "
            f"the handler itself {handler:.3f} ms vs {_p50(floor):.3f} ms in the loop; the rest "
            "is both processes waking after a wait of over a millisecond rather than "
            "microseconds); the served path's own machinery (batcher, thread hop, interceptors, "
            f"timings) {rest:+.3f} ms"
        )
    if batcher is not None:
        parts.append(_p50(batcher) - _p50(floor))
        text += (
            f" (the batcher's thread hop alone, driven in-process without RPC: {parts[-1]:+.3f} ms)"
        )
    text += "."
    if any(part < -0.05 for part in parts):  # a few tens of us either way is expected noise
        text += (
            " A negative part means the machine's noise in this run was larger than that part: "
            "the split subtracts p50s of rows measured at different moments."
        )
    if _p50(health) >= 0.3:
        text += (
            " The 0.3 ms goal is below one bare Python round trip on this machine: a server in "
            "Python cannot reach it here, whatever its handler does."
        )
    return text


def _batching(runs: list[Row]) -> list[str]:
    rows = [r for r in runs if r["scenario"] == "batching" and r["load"] == "closed"]
    at16 = sorted((r for r in rows if r["concurrency"] == 16), key=lambda r: r["batching"])
    if not at16:
        return []
    parts = []
    for row in at16:
        server = row.get("server_ms", {}).get("encode", {})
        parts.append(
            f"{row['batching']}: {row['throughput_rps']:.0f} req/s, mean batch "
            f"{server.get('mean_batch', 0):.1f}, server queue p50 "
            f"{server.get('queue_p50', 0):.2f} ms"
        )
    opened = [r for r in runs if r["scenario"] == "batching" and r["load"] == "open"]
    sustained = []
    for label in sorted({r["batching"] for r in opened}):
        ok = [
            r["rate"]
            for r in opened
            if r["batching"] == label and r["throughput_rps"] >= 0.95 * r["rate"]
        ]
        if ok:
            sustained.append(f"{label} {max(ok):.0f} req/s")
    text = "- **Dynamic batching at 16 callers.** " + "; ".join(parts) + "."
    if sustained:
        text += (
            " Highest offered Poisson rate still served in full (>= 95% completed in the window): "
            + "; ".join(sustained)
            + "."
        )
    return [text]


def _gemm_rates(runs: list[Row]) -> dict[tuple[int, int], tuple[int, float]]:
    """(threads, queries' rows) -> (rows, GMAC/s) of the int8 product rows."""
    return {
        (next(iter(r["threads"].values())), int(r["rows_as_queries"])): (
            int(r["batch"]),
            float(r["gmac_per_s"]),
        )
        for r in runs
        if r["stage"] == "int8_gemm"
    }


def _model_ceiling(document: dict[str, Any], runs: list[Row]) -> list[str]:
    """What a batch can speed up inside the model: the int8 product alone by rows, beside the
    whole model's measured batch gain. Bounds dynamic batching before any RPC cost."""
    work: dict[str, Any] = {}
    for scenario in document.get("scenarios", []):
        work.update(scenario.get("extra", {}).get("encoder_work", {}))
    rates = _gemm_rates(runs)
    single = _encode_row(runs, "onnx-int8", 1, 1)
    if not (work and single and (1, 1) in rates):
        return []
    one_query = rates[(1, 1)][1]
    parts = [
        f"{g:.0f} GMAC/s at the rows of {q} quer{'y' if q == 1 else 'ies'} ({rows} rows) "
        f"with {t} thread{'s' if t > 1 else ''}"
        for (t, q), (rows, g) in sorted(rates.items())
    ]
    macs = float(work["mean_macs_per_query"])
    text = (
        f"- **What a batch can gain inside the model.** An average real query is "
        f"{work['mean_query_tokens']:.1f} tokens: {macs / 1e6:.0f} M multiply-accumulates in "
        f"the served encoder (counted from its graph: {work['linear_macs_per_token'] / 1e6:.1f} M "
        f"per token in weight products, plus attention in {work['attention_layers']} layers). "
        "One int8 product of the model's kind alone (DynamicQuantizeLinear + MatMulInteger, the "
        "FFN's shape) runs at " + "; ".join(parts) + "."
    )
    gains = []
    for threads in (1, 2):
        best = max((g for (t, _), (_, g) in rates.items() if t == threads), default=0.0)
        if best:
            gains.append(
                f"{best / one_query:.2f}x with {threads} thread{'s' if threads > 1 else ''}"
            )
    text += (
        " So batching can speed the matrix work up by at most "
        + " and ".join(gains)
        + " over one query per call on 1 thread."
    )
    text += _whole_model_share(runs, single, macs, one_query)
    sizes = sorted(
        {r["batch"] for r in runs if r["scenario"] == "encode" and r["stage"] == "encode"}
    )
    shown = [b for b in sizes if b == 16 or b == sizes[-1]] if sizes[-1] > 1 else []
    measured = []
    ratios: dict[int, float] = {}
    for size in shown:
        for threads in (1, 2):
            batched = _encode_row(runs, "onnx-int8", size, threads)
            if batched:
                ratio = batched["items_per_s"] / single["items_per_s"]
                ratios[size] = max(ratios.get(size, 0.0), ratio)
                plural = "s" if threads > 1 else ""
                measured.append(f"{ratio:.2f}x (batches of {size}, {threads} thread{plural})")
    if measured:
        text += (
            " Measured on the whole model, in-process, real queries, against one per call on 1 "
            "thread: " + ", ".join(measured) + " (padding and the per-token work do not shrink "
            "in a batch)."
        )
    if 16 in ratios:
        text += (
            f" Even with both cores given to the model and nothing else, batches of 16 reach "
            f"{ratios[16]:.2f}x, {'below' if ratios[16] < 2 else 'above'} the 2x goal before any "
            "RPC is paid; over gRPC the same two cores also run both ends of every RPC and the "
            "load generator."
        )
    return [text]


def _whole_model_share(runs: list[Row], single: Row, macs: float, one_query: float) -> str:
    """The whole model's matrix-work rate at batch 1 on 1 thread as a share of the product's
    rate, for the served graph and (when timed) the plain graph beside it."""
    effective = single["items_per_s"] * macs / 1e9
    graph = single.get("graph", "served")
    text = (
        f" The whole model ({graph} graph) at batch 1 on 1 thread does {effective:.0f} GMAC/s of "
        f"matrix work ({single['items_per_s']:.0f} queries/s), {100 * effective / one_query:.0f}%"
        " of the product's rate at the same rows"
    )
    plain = _encode_row(runs, "onnx-int8-plain", 1, 1)
    if plain is None:
        return text + (
            ": the rest of its time goes to normalisation, softmax, GELU, (de)quantization and "
            "per-operator overhead."
        )
    before = plain["items_per_s"] * macs / 1e9
    return text + (
        f"; the plain graph, timed beside it, {before:.0f} GMAC/s ({plain['items_per_s']:.0f} "
        f"queries/s), {100 * before / one_query:.0f}%. The rest of the time goes to "
        "normalisation, softmax, GELU, (de)quantization, per-operator overhead and, outside the "
        "model, tokenization and the Python around the session call; fusing attention, the "
        "embeddings and the pooling into the graph removes much of the per-operator part."
    )


def _graphs(runs: list[Row]) -> list[str]:
    """Fused vs plain int8 graph: batch-1 encode at each thread count, rerank of 100 passages
    for each reranker timed."""
    parts = []
    encode = [r for r in runs if r["scenario"] == "encode" and r["stage"] == "encode"]
    for threads in sorted({next(iter(r["threads"].values())) for r in encode}):
        fused = _encode_row(encode, "onnx-int8", 1, threads)
        plain = _encode_row(encode, "onnx-int8-plain", 1, threads)
        if fused and plain:
            parts.append(
                f"query encode batch 1, {threads} thread{'s' if threads > 1 else ''}: p50 "
                f"{_p50(fused):.2f} vs {_p50(plain):.2f} ms ({_p50(plain) / _p50(fused):.2f}x)"
            )
        big = max((r["batch"] for r in encode), default=1)
        fused = _encode_row(encode, "onnx-int8", big, threads)
        plain = _encode_row(encode, "onnx-int8-plain", big, threads)
        if big > 1 and fused and plain:
            parts.append(
                f"batches of {big} queries, {threads} thread{'s' if threads > 1 else ''}: "
                f"{fused['items_per_s']:.0f} vs {plain['items_per_s']:.0f} queries/s "
                f"({fused['items_per_s'] / max(plain['items_per_s'], 1e-9):.2f}x)"
            )
    rerank = [r for r in runs if r["scenario"] == "rerank" and r.get("depth") == 100]
    for prefix, label in (("", "default reranker"), ("small-", "small reranker")):
        by = {r.get("variant"): r for r in rerank if r["path"] != "grpc"}
        fused, plain = by.get(f"{prefix}onnx-int8"), by.get(f"{prefix}onnx-int8-plain")
        if fused and plain:
            gain = fused["items_per_s"] / max(plain["items_per_s"], 1e-9)
            parts.append(
                f"rerank 100 passages, {label} ({fused['model']}): {fused['items_per_s']:.1f} vs "
                f"{plain['items_per_s']:.1f} pairs/s ({gain:.2f}x; {_p50(fused) / 1000:.2f} vs "
                f"{_p50(plain) / 1000:.2f} s per query{_spread(fused, '; fused ')})"
            )
    if not parts:
        return []
    return [
        "- **Fused vs plain int8 graph (served vs the export quantized as is, interleaved).** "
        + "; ".join(parts)
        + ". The fused graph runs attention as one QAttention per layer (Q, K and V in one int8 "
        "product), embeddings as QEmbedLayerNormalization, the rerankers' last layer for the "
        "[CLS] row only and the bi-encoder's pooling inside the graph; the manifest lists its "
        "operators and verify figures."
    ]


def _rerank(runs: list[Row]) -> list[str]:
    rows = [r for r in runs if r["scenario"] == "rerank" and r.get("depth") == 100]
    by = {r.get("variant"): r for r in rows if r["path"] != "grpc"}
    grpc = _find(rows, lambda r: r["path"] == "grpc")
    if "onnx-int8" not in by:
        return []
    text = (
        f"- **Rerank 100 real passages.** int8 {by['onnx-int8']['items_per_s']:.1f} pairs/s "
        f"({_p50(by['onnx-int8']) / 1000:.2f} s per query)"
    )
    for name in ("onnx-fp32", "pytorch-fp32"):
        if name in by:
            text += f", {name} {by[name]['items_per_s']:.1f} pairs/s"
    if grpc:
        text += f"; over gRPC {grpc['items_per_s']:.1f} pairs/s"
    text += (
        ". Depth is the main latency lever: the cross-encoder reads every passage together with "
        "the query, so the cost per query grows linearly with depth (pairs/s stays flat)."
    )
    return [text]


def _search(runs: list[Row]) -> list[str]:
    rows = [
        r
        for r in runs
        if r["scenario"] == "search" and r["load"] == "closed" and not r.get("sweep")
    ]
    parts = []
    for stage in sorted({r["stage"] for r in rows if "rerank" not in r["stage"]}):
        cells = {r["path"]: r for r in rows if r["stage"] == stage}
        if "in_process" in cells:
            text = f"{stage} {_p50(cells['in_process']):.2f} ms in-process"
            for path in ("grpc", "grpc_multiprocess"):
                if path in cells:
                    text += f", {_p50(cells[path]):.2f} ms {path}"
            parts.append(text)
    if not parts:
        return []
    return [
        "- **End to end (p50, one caller).** "
        + "; ".join(parts)
        + ". Each stage reached over gRPC adds roughly one Python RPC round trip; hybrid calls "
        "the encoder, the ANN index and BM25, then fetches documents: four internal calls."
    ]


def _ann(document: dict[str, Any]) -> list[str]:
    runs = [r for r in document["runs"] if r["stage"] == "ann" and "query_mode" in r]
    out = []
    sizes = {r["dataset"]: r["n_vectors"] for r in runs}
    for dataset in sorted(sizes, key=lambda d: (not d.startswith("synthetic"), sizes[d])):
        rows = [r for r in runs if r["dataset"] == dataset and r["query_mode"] == "single"]
        best: dict[str, Row] = {}
        for row in rows:
            if row["recall@10"] >= 0.95 and (
                row["engine"] not in best or ann_qps(row) > ann_qps(best[row["engine"]])
            ):
                best[row["engine"]] = row
        if not best:
            continue
        parts = [
            f"{e} {ann_qps(r):.0f} q/s (ef {r['ef'] or '-'}, recall {r['recall@10']:.3f})"
            for e, r in sorted(best.items(), key=lambda kv: -ann_qps(kv[1]))
        ]
        capped = sorted(
            e for e in {r["engine"] for r in rows} if e not in best and e.startswith("usearch")
        )
        text = f"- **ANN, {dataset}, single queries at recall@10 >= 0.95 (1/p50):** "
        text += "; ".join(parts)
        if capped:
            text += f". Never reaching 0.95 at the ef values tried: {', '.join(capped)}"
        if not any(e.startswith("usearch") for e in best):
            text += _common_recall(rows)
        out.append(text + ".")
    out += _ann_why(document, runs)
    return out


def _common_recall(rows: list[Row]) -> str:
    """Where usearch cannot reach 0.95: the two compared at the best recall both reach."""
    usearch = [r for r in rows if r["engine"].startswith("usearch")]
    faiss = [r for r in rows if r["engine"] == "faiss-hnsw"]
    if not usearch or not faiss:
        return ""
    level = min(max(r["recall@10"] for r in usearch), max(r["recall@10"] for r in faiss))
    best_u = max((r for r in usearch if r["recall@10"] >= level), key=ann_qps)
    best_f = max((r for r in faiss if r["recall@10"] >= level), key=ann_qps)
    return (
        f". At the best recall both reach ({level:.3f}): {best_u['engine']} ef {best_u['ef']} "
        f"{ann_qps(best_u):.0f} q/s vs faiss-hnsw ef {best_f['ef']} {ann_qps(best_f):.0f} q/s "
        f"({ann_qps(best_u) / max(ann_qps(best_f), 1e-9):.2f}x)"
    )


def _ann_why(document: dict[str, Any], runs: list[Row]) -> list[str]:
    """Per-distance cost and per-call cost, engine by engine, on the largest data set."""
    single = [r for r in runs if r["query_mode"] == "single" and r.get("ns_per_distance")]
    if not single:
        return []
    largest = max(single, key=lambda r: r["n_vectors"])["dataset"]
    engines = {r["engine"] for r in single if r["dataset"] == largest and r["ef"]}
    common = [
        ef
        for ef in {r["ef"] for r in single if r["dataset"] == largest and r["ef"]}
        if all(
            any(r["engine"] == e and r["ef"] == ef and r["dataset"] == largest for r in single)
            for e in engines
        )
    ]
    ef = max(common) if common else None
    at = {
        r["engine"]: r
        for r in single
        if r["dataset"] == largest and (r["ef"] == ef or r["engine"] == "exact-numpy")
    }
    faiss = at.get("faiss-hnsw")
    parts = []
    for engine, row in sorted(at.items(), key=lambda kv: kv[1]["ns_per_distance"]):
        text = (
            f"{engine} {row['distances_per_query']:.0f} distances/query (recall "
            f"{row['recall@10']:.3f}) x {row['ns_per_distance']:.0f} ns"
        )
        if faiss is not None and engine.startswith("usearch"):
            ratio = row["ns_per_distance"] / faiss["ns_per_distance"]
            text += f" ({ratio:.2f}x FAISS per distance)"
        parts.append(text)
    # The engines built with the scenario's own M and efc (an "@efcN" variant differs on purpose).
    graphs = [r for e, r in at.items() if e != "exact-numpy" and "@" not in e]
    work = ""
    if len(graphs) > 1:
        counts = [r["distances_per_query"] for r in graphs]
        recalls = [r["recall@10"] for r in graphs]
        spread = 100 * (max(counts) / min(counts) - 1)
        work = (
            f" At equal ef and equal build settings the HNSW graphs compute distance counts within "
            f"{spread:.0f}% of each other and reach recall {min(recalls):.3f}-{max(recalls):.3f}: "
            "the speed gap at equal ef is the cost per distance (kernel, bytes per vector, "
            "per-call overhead); a recall gap comes from the graphs themselves (same M and "
            "efc, different build heuristics) and decides how high ef must go for recall 0.95."
        )
    variants = sorted(e for e in at if "@" in e)
    if variants:
        work += (
            f" Built with a larger expansion_add ({', '.join(variants)}), the usearch graph "
            "reaches a given recall at a lower ef; its build time is in the index builds table "
            "of the ANN section."
        )
    hardware: dict[str, str] = {}
    overhead: dict[str, float] = {}
    for scenario in document.get("scenarios", []):
        overhead.update(scenario.get("extra", {}).get("call_overhead_us", {}))
        for build in scenario.get("extra", {}).get("builds", []):
            if build["engine"].startswith("usearch") and build.get("hardware"):
                hardware[build["engine"]] = build["hardware"]
    text = (
        f"- **Why usearch and FAISS differ ({largest}, ef {ef}, one query per call).** Time per "
        "query = distances computed x cost per distance (+ a fixed cost per call): "
        + "; ".join(parts)
        + "."
        + work
    )
    if hardware:
        text += (
            " usearch picks its SIMD kernel per dtype (`Index.hardware_acceleration`: "
            + ", ".join(f"{e} {h}" for e, h in sorted(hardware.items()))
            + "); bf16 and i8 also read half or a quarter of the bytes per vector."
        )
    if overhead:
        text += (
            " Fixed cost of one single-query Python call on a tiny index (p50 us): "
            + ", ".join(f"{k} {v}" for k, v in overhead.items())
            + ". One batched `search(..., threads=N)` call pays it once for all queries "
            "(the `batch` rows)."
        )
    return [text]


def _errors(runs: list[Row]) -> list[str]:
    failed = [r for r in runs if r.get("errors")]
    if not failed:
        return ["- **Errors.** No call failed in any row."]
    kinds: dict[str, int] = {}
    examples: dict[str, str] = {}
    for row in failed:
        for kind, count in (row.get("error_kinds") or {"unrecorded": row["errors"]}).items():
            kinds[kind] = kinds.get(kind, 0) + count
        for kind, message in (row.get("error_examples") or {}).items():
            examples.setdefault(kind, message)
    opened = sum(1 for r in failed if r["load"] == "open")
    text = (
        f"- **Errors.** {len(failed)} rows saw failed calls ({opened} of them open-loop rows "
        "offered more than the server could serve), by status: "
        + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        + "."
    )
    if examples:
        text += " First message of each: " + "; ".join(
            f'{k}: "{v}"' for k, v in sorted(examples.items())
        )
        text += "."
    refused = examples.get("UNAVAILABLE", "")
    if "RST_STREAM" in refused and "code 7" in refused:
        text += (
            " RST_STREAM code 7 is REFUSED_STREAM: past max_concurrent_streams in flight the "
            "server refuses new streams (UNAVAILABLE) before the batcher's own queue limit "
            "(RESOURCE_EXHAUSTED) is reached, and clients that retry UNAVAILABLE add load "
            "exactly then."
        )
    return [text]


def _ann_cache(document: dict[str, Any]) -> list[str]:
    builds = [
        b
        for scenario in document.get("scenarios", [])
        for b in scenario.get("extra", {}).get("builds", [])
        if b["engine"] != "exact-numpy"  # nothing to build
    ]
    cached = [b for b in builds if b.get("cached")]
    if not cached:
        return []
    seconds = sum(float(b.get("build_s", 0)) for b in cached)
    return [
        f"- **Cached ANN indexes.** {len(cached)} of {len(builds)} indexes were loaded from "
        "artifacts/bench-cache/ann (built by an earlier run of the same scenario on this machine;"
        f" their build times are as measured then). A cold run adds about {seconds / 60:.0f} "
        "minutes of index builds."
    ]


def explain(document: dict[str, Any]) -> list[str]:
    runs = document["runs"]
    lines = (
        _encode(runs)
        + _grpc(runs)
        + _batching(runs)
        + _model_ceiling(document, runs)
        + _graphs(runs)
        + _rerank(runs)
        + _search(runs)
        + _ann(document)
        + _ann_cache(document)
        + _errors(runs)
    )
    return ["### Findings", "", *lines] if lines else []
