"""`neuralir eval` end to end on ADI and MEDLINE: real models, real indexes, real gRPC services."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neuralir.eval.cli import main
from neuralir.eval.pipelines import parse_pipeline
from neuralir.index.build import IndexBuildSettings
from neuralir.index.reuse import EnsuredIndex, ensure_index, keyed_path
from neuralir.index.store import IndexStore
from neuralir.models.manifest import read_manifest, sha256_file
from neuralir.server.embedded import EmbeddedServer
from neuralir.server.settings import ServerSettings

ALL_PIPELINES = ("bm25", "dense", "hybrid", "bm25+rerank", "dense+rerank", "hybrid+rerank")


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Index cache shared by every eval run of the session: each dataset is indexed once."""
    return tmp_path_factory.mktemp("eval-indexes")


def run_eval(argv: list[str]) -> tuple[int, str, str]:
    """main() in this process, with its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def common_args(models_dir: Path, eval_cache: Path) -> list[str]:
    return ["--models", str(models_dir), "--index-cache", str(eval_cache)]


def assert_valid_report(report: dict[str, Any], pipelines: list[str], queries: int) -> None:
    assert report["queries"] == queries
    assert list(report["pipelines"]) == pipelines
    for name in pipelines:
        result = report["pipelines"][name]
        for metric in ("ndcg@10", "mrr@10", "recall@100"):
            assert 0.0 <= result[metric] <= 1.0, (name, metric, result[metric])
        assert result["queries"] == queries
        latency = result["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"]
        assert latency["mean"] > 0
        assert result["qps"] > 0
        if result["rerank_depth"]:
            # The rerank stage's own time is part of the whole search's.
            rerank = result["rerank_ms"]
            assert 0 < rerank["p50"] <= rerank["p99"]
            assert rerank["p50"] < latency["p50"]
        else:
            assert "rerank_ms" not in result


# ---------------------------------------------------------------- pipelines and options


@pytest.mark.parametrize(
    ("text", "mode", "depth"),
    [
        ("bm25", "lexical", 0),
        ("dense", "dense", 0),
        ("hybrid", "hybrid", 0),
        ("bm25+rerank", "lexical", 100),
        ("dense+rerank@50", "dense", 50),
        ("hybrid+rerank@200", "hybrid", 200),
    ],
)
def test_pipeline_names(text: str, mode: str, depth: int) -> None:
    pipeline = parse_pipeline(text)
    assert (pipeline.name, pipeline.mode, pipeline.rerank_depth) == (text, mode, depth)


@pytest.mark.parametrize(
    ("text", "fusion", "weight", "depth", "cascade"),
    [
        ("hybrid-rrf", "rrf", None, 0, 0),
        ("hybrid-convex", "convex", None, 0, 0),
        ("hybrid-convex@0.35+rerank@20", "convex", 0.35, 20, 0),
        ("bm25+cascade@50:20", "", None, 20, 50),
        ("hybrid-rrf+cascade@30:10", "rrf", None, 10, 30),
    ],
)
def test_fusion_and_cascade_pipeline_names(
    text: str, fusion: str, weight: float | None, depth: int, cascade: int
) -> None:
    pipeline = parse_pipeline(text)
    assert (pipeline.fusion, pipeline.fusion_weight) == (fusion, weight)
    assert (pipeline.rerank_depth, pipeline.cascade_depth) == (depth, cascade)


@pytest.mark.parametrize(
    "argv",
    [
        ["--pipeline", "sparse"],
        ["--pipeline", "dense+rerank@0"],
        ["--pipeline", "dense+rerank@201"],
        ["--pipeline", "bm25-convex"],
        ["--pipeline", "hybrid-rrf@0.5"],
        ["--pipeline", "hybrid-convex@1.5"],
        ["--pipeline", "bm25+cascade@20:20"],
        ["--pipeline", "bm25+cascade@201:20"],
        ["--pipeline", "bm25", "--pipeline", "bm25"],
        ["--pipeline", "bm25", "--k", "0"],
        ["--pipeline", "bm25", "--blend-weight", "1.5"],
    ],
)
def test_bad_options_exit_2(argv: list[str], tmp_path: Path) -> None:
    code, out, err = run_eval(["--dataset", str(tmp_path), "--split", "test", *argv])
    assert code == 2
    assert out == ""
    assert "Traceback" not in err


# ---------------------------------------------------------------- bad datasets


@pytest.mark.needs_data
@pytest.mark.parametrize(
    ("damage", "where"),
    [
        ("1\t17", "qrels/test.tsv:5"),  # a line with two fields
        ("1\t17\tyes", "qrels/test.tsv:5"),  # a score that is not a number
        ("1\t9999\t1", "qrels/test.tsv:5"),  # a document that is not in the corpus
    ],
)
def test_corrupt_qrels_exit_2_naming_file_and_line(
    shared_data: Path, tmp_path: Path, damage: str, where: str
) -> None:
    adi = Path(shutil.copytree(shared_data / "adi", tmp_path / "adi"))
    qrels = adi / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    lines[4] = damage
    qrels.write_text("\n".join(lines) + "\n")
    code, out, err = run_eval(
        ["--dataset", str(adi), "--split", "test", "--pipeline", "bm25", "--json"]
    )
    assert code == 2
    assert out == ""  # no half report on stdout
    assert f"error: {adi}/{where}:" in err
    assert "Traceback" not in err


@pytest.mark.needs_data
def test_missing_split_exit_2(shared_data: Path) -> None:
    code, _, err = run_eval(
        ["--dataset", str(shared_data / "adi"), "--split", "dev", "--pipeline", "bm25"]
    )
    assert code == 2
    assert f"{shared_data / 'adi' / 'qrels' / 'dev.tsv'}: missing; splits here: test" in err


# ---------------------------------------------------------------- in-process, end to end


@pytest.fixture(scope="module")
def adi_report(shared_data: Path, models_dir: Path, eval_cache: Path) -> dict[str, Any]:
    """Every pipeline on 12 ADI queries (rerank depth 5 keeps the untrained reranker cheap)."""
    pipelines = [p if "rerank" not in p else f"{p}@5" for p in ALL_PIPELINES]
    argv = ["--dataset", str(shared_data / "adi"), "--split", "test", "--json"]
    argv += [arg for p in pipelines for arg in ("--pipeline", p)]
    argv += ["--max-queries", "12", "--concurrency", "2", *common_args(models_dir, eval_cache)]
    code, out, err = run_eval(argv)
    assert code == 0, err
    return dict(json.loads(out))


@pytest.mark.needs_data
@pytest.mark.slow
def test_every_pipeline_runs_in_process(adi_report: dict[str, Any]) -> None:
    pipelines = [p if "rerank" not in p else f"{p}@5" for p in ALL_PIPELINES]
    assert_valid_report(adi_report, pipelines, queries=12)
    assert (adi_report["dataset"], adi_report["split"]) == ("adi", "test")
    assert adi_report["target"] == "in-process"
    assert adi_report["concurrency"] == 2
    assert adi_report["encoder_model_id"].startswith("all-MiniLM-L6-v2@")
    assert adi_report["rerank_model_id"] == adi_report["cross_encoder_model_id"]
    for name, result in adi_report["pipelines"].items():
        assert result["rerank_depth"] == (5 if "rerank" in name else 0)
    # Reranking only reorders the top 5 of the same first stage: the top 100 is the same set.
    for first in ("bm25", "dense", "hybrid"):
        pipelines_ = adi_report["pipelines"]
        assert pipelines_[f"{first}+rerank@5"]["recall@100"] == pipelines_[first]["recall@100"]


def read_beir_qrels(path: Path) -> dict[str, dict[str, int]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    qrels: dict[str, dict[str, int]] = {}
    for qid, doc_id, grade in rows[1:]:
        qrels.setdefault(qid, {})[doc_id] = int(grade)
    return qrels


def textbook_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, list[str]]
) -> dict[str, float]:
    """nDCG@10 (linear gain, log2 discount, as trec_eval), MRR@10 and Recall@100 by hand."""
    ndcg, mrr, recall = [], [], []
    for qid, judged in qrels.items():
        ranked = run.get(qid, [])
        relevant = {d for d, g in judged.items() if g > 0}
        dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
        ideal = sorted(judged.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        ndcg.append(dcg / idcg)
        first = next((i for i, d in enumerate(ranked[:10], start=1) if d in relevant), None)
        mrr.append(1.0 / first if first else 0.0)
        recall.append(len(relevant & set(ranked[:100])) / len(relevant))
    count = len(qrels)
    return {
        "ndcg@10": sum(ndcg) / count,
        "mrr@10": sum(mrr) / count,
        "recall@100": sum(recall) / count,
    }


@pytest.mark.needs_data
@pytest.mark.slow
# ranx's numba kernels warn about an internal cast whenever they compile (no on-disk cache yet).
@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaTypeSafetyWarning")
def test_console_script_bm25_matches_reference(
    shared_data: Path,
    models_dir: Path,
    eval_cache: Path,
    adi_report: dict[str, Any],
    tmp_path: Path,
) -> None:
    """The installed `neuralir eval` on all of ADI; BM25 equals ranx on a run built by hand."""
    adi = shared_data / "adi"
    neuralir = Path(sys.executable).with_name("neuralir")
    argv = [str(neuralir), "eval", "--dataset", str(adi), "--split", "test", "--json"]
    argv += ["--pipeline", "bm25", "--pipeline", "dense", "--concurrency", "1"]
    done = subprocess.run(
        argv + common_args(models_dir, eval_cache),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # the whole of stdout is one JSON object
    assert_valid_report(report, ["bm25", "dense"], queries=35)
    assert report["index"] == adi_report["index"]
    assert report["index_reused"] is True  # built by the first run of the session
    assert report["concurrency"] == 1

    # The reference: the same index searched directly (no gRPC), written as a TREC run file.
    queries = {}
    for line in (adi / "queries.jsonl").read_text().splitlines():
        record = json.loads(line)
        queries[record["_id"]] = record["text"]
    qrels = read_beir_qrels(adi / "qrels" / "test.tsv")
    store = IndexStore.open(Path(report["index"]))
    try:
        run = {qid: [d for d, _ in store.lexical_search(queries[qid], 100)] for qid in qrels}
    finally:
        store.close()
    for ranked in run.values():  # hand checks: distinct documents, at most 100
        assert len(ranked) == len(set(ranked)) <= 100
    run_file = tmp_path / "adi-bm25.run"
    with run_file.open("w") as handle:
        for qid, ranked in run.items():
            for rank, doc_id in enumerate(ranked, start=1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {len(ranked) - rank + 1} bm25\n")

    from ranx import Qrels, Run, evaluate

    reference = evaluate(
        Qrels.from_dict(qrels),
        Run.from_file(str(run_file), kind="trec"),
        ["ndcg@10", "mrr@10", "recall@100"],
        make_comparable=True,
    )
    measured = report["pipelines"]["bm25"]
    for metric, value in reference.items():
        assert measured[metric] == pytest.approx(float(value), abs=1e-12), metric
    # ...and ranx agrees with the textbook (trec_eval) definitions on this run.
    assert textbook_metrics(qrels, run) == pytest.approx(
        {m: float(v) for m, v in reference.items()}, abs=1e-9
    )
    assert 0.40 < measured["ndcg@10"] < 0.60  # plain BM25 is ~0.44 on ADI; stemming helps


# ---------------------------------------------------------------- against running services


@pytest.fixture(scope="module")
def medline_server(
    shared_data: Path, models_dir: Path, eval_cache: Path
) -> Iterator[EmbeddedServer]:
    """MEDLINE indexed through the eval cache and served by an already-running EmbeddedServer."""
    corpus = shared_data / "medline" / "corpus.jsonl"
    encoder_dir = models_dir / "bi-encoder" / "int8"
    path = keyed_path(
        eval_cache, "medline", sha256_file(corpus), read_manifest(encoder_dir).model_id
    )
    cached = ensure_index(corpus, path, encoder_dir)
    settings = ServerSettings(
        port=0,
        index_dir=cached.path,
        encoder_model=encoder_dir,
        rerank_models=(("default", models_dir / "cross-encoder" / "int8"),),
        log_format="text",
    )
    with EmbeddedServer(settings) as server:
        yield server


@pytest.mark.needs_data
@pytest.mark.slow
def test_target_uses_running_services(shared_data: Path, medline_server: EmbeddedServer) -> None:
    pipelines = ["bm25", "dense", "hybrid+rerank@3"]
    argv = ["--dataset", str(shared_data / "medline"), "--split", "test", "--json"]
    argv += [arg for p in pipelines for arg in ("--pipeline", p)]
    code, out, err = run_eval([*argv, "--target", medline_server.address])
    assert code == 0, err
    report = json.loads(out)
    assert_valid_report(report, pipelines, queries=30)
    assert report["target"] == medline_server.address
    assert "index" not in report  # nothing was built or started
    assert report["pipelines"]["dense"]["ndcg@10"] > 0.3  # MiniLM finds medical abstracts


@pytest.mark.needs_data
@pytest.mark.slow
def test_target_with_another_corpus_exit_2(
    shared_data: Path, medline_server: EmbeddedServer
) -> None:
    argv = ["--dataset", str(shared_data / "adi"), "--split", "test", "--pipeline", "bm25"]
    code, out, err = run_eval([*argv, "--target", medline_server.address])
    assert code == 2
    assert out == ""
    assert "was built from another corpus" in err


# ---------------------------------------------------------------- the index cache


@pytest.mark.needs_data
@pytest.mark.slow
def test_index_cache_reuses_and_rebuilds(
    shared_data: Path, bi_encoder_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    lines = (shared_data / "adi" / "corpus.jsonl").read_text().splitlines()[:12]
    corpus.write_text("\n".join(lines) + "\n")
    model_id = read_manifest(bi_encoder_dir).model_id

    def ensure() -> EnsuredIndex:
        path = keyed_path(tmp_path / "cache", "tiny", sha256_file(corpus), model_id)
        return ensure_index(corpus, path, bi_encoder_dir, IndexBuildSettings(threads=1))

    first = ensure()
    assert first.built
    again = ensure()
    assert (again.path, again.built) == (first.path, False)
    with (first.path / "docs.sqlite").open("r+b") as handle:  # damage the stored index
        handle.seek(100)
        handle.write(b"\xff")
    rebuilt = ensure()
    assert (rebuilt.path, rebuilt.built) == (first.path, True)
    f16 = IndexBuildSettings(threads=1, dtype="f16")
    other_settings = ensure_index(corpus, first.path, bi_encoder_dir, f16)
    assert other_settings.built
    assert "other settings" in other_settings.reason
    corpus.write_text("\n".join(lines[:6]) + "\n")  # another corpus gets another index
    other = ensure()
    assert other.path != first.path
    assert other.built
    same_place = ensure_index(corpus, first.path, bi_encoder_dir, f16)
    assert same_place.built
    assert "another corpus" in same_place.reason
