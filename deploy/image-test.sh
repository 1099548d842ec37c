#!/usr/bin/env bash
# The container image, built and run for real: builds the Dockerfile with podman, starts the
# image, waits for grpc.health.v1 SERVING, sends one hybrid search with reranking through every
# stage with the project's client from outside the container (index built on the host, mounted
# read-only), checks that the runtime image holds no torch and runs as non-root, stops it with
# SIGTERM, and reports the image size, the build time and the start-to-SERVING time.
#
# Where no container registry is reachable it builds a Debian base image with mmdebstrap (from
# the same Debian mirror apt uses) and passes it as the Dockerfile's PYTHON_IMAGE; where a
# local folder holds the torch 2.13.0+cpu wheel (pip's find-links) the build takes torch from
# it (TORCH_WHEELS). Where the machine cannot run containers it says SKIP and why (exit 0),
# after still trying the build. Needs podman (Debian: apt-get install podman mmdebstrap runc)
# and the host's virtual environment (make setup); `make image-test` runs it.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/image-test.sh [options]

  --base auto|local|IMAGE  base image for the Dockerfile's PYTHON_IMAGE. auto (default): the
                           official python:3.11-slim-bookworm when it can be pulled, else a
                           local Debian base built with mmdebstrap; local: always mmdebstrap
  --torch-wheels DIR|none  folder holding torch-2.13.0+cpu-cp311 (default: the first folder of
                           pip's find-links that holds it; none: the CPU wheel index)
  --image NAME             tag of the built image (default localhost/neural-ir-serve:image-test)
  --no-cache               a cold build: no cached layers, and the local base rebuilt
  --skip-build             test an image already built under --image
  --work DIR               scratch folder (default build/image-test)
  -h, --help               this help

Environment: PODMAN (default podman), VENV (default .venv), MODELS (default artifacts/models).
Prints SKIP: <reason> and exits 0 where the machine cannot build or run containers.
EOF
}

cd "$(dirname "$0")/.."
PODMAN=${PODMAN:-podman}
VENV=${VENV:-.venv}
MODELS=${MODELS:-artifacts/models}
OFFICIAL_BASE=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/neuralir-base:bookworm
base=auto
torch_wheels=auto
image=localhost/neural-ir-serve:image-test
no_cache=0
skip_build=0
work=build/image-test

while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) base=${2:?--base needs a value}; shift 2 ;;
        --torch-wheels) torch_wheels=${2:?--torch-wheels needs a value}; shift 2 ;;
        --image) image=${2:?--image needs a value}; shift 2 ;;
        --work) work=${2:?--work needs a value}; shift 2 ;;
        --no-cache) no_cache=1; shift ;;
        --skip-build) skip_build=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

say() { echo "image-test: $*"; }
skip() { echo "SKIP: $*"; exit 0; }
fail() { echo "FAIL: $*" >&2; exit 1; }
now_ns() { date +%s%N; }
seconds_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

command -v "$PODMAN" >/dev/null 2>&1 ||
    skip "podman is not installed (Debian: apt-get install -y podman mmdebstrap runc)"
[[ -x $VENV/bin/python ]] || fail "no virtual environment at $VENV: run make setup first"
mkdir -p "$work"
work=$(cd "$work" && pwd)

# A private containers.conf, unless the caller brings one: runc where it is installed (crun
# refuses hybrid cgroups: "cgroups in hybrid mode not supported"), and ulimits the sandbox
# accepts. Podman's defaults fail there ("error setting rlimit type 7: operation not
# permitted"); so do open files above this shell's hard limit and processes above the kernel's
# pid_max (measured: nproc 32768 = pid_max starts, 32769 fails with "rlimit type 6").
if [[ -z ${CONTAINERS_CONF:-} ]]; then
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo "$nproc")
    [[ $nofile == unlimited ]] && nofile=1048576
    [[ $nproc == unlimited || $nproc -gt $pid_max ]] && nproc=$pid_max
    {
        echo "[containers]"
        echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
        if command -v runc >/dev/null 2>&1; then
            echo "[engine]"
            echo 'runtime = "runc"'
        fi
    } >"$work/containers.conf"
    export CONTAINERS_CONF=$work/containers.conf
fi
say "$("$PODMAN" --version), CONTAINERS_CONF=$CONTAINERS_CONF"

# ---------------------------------------------------------------- base image
build_local_base() {
    command -v mmdebstrap >/dev/null 2>&1 || return 1
    say "building a Debian bookworm base with mmdebstrap"
    local started
    started=$(now_ns)
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$work/rootfs.tar" >"$work/mmdebstrap.log" 2>&1 ||
        { tail -20 "$work/mmdebstrap.log"; return 1; }
    "$PODMAN" import --quiet "$work/rootfs.tar" "$LOCAL_BASE" >/dev/null
    rm -f "$work/rootfs.tar"
    say "local base $LOCAL_BASE in $(seconds_since "$started") s"
}

base_note=""
if [[ $skip_build == 0 ]]; then
    if [[ $base == auto ]]; then
        if "$PODMAN" image exists "$OFFICIAL_BASE" ||
            pull_error=$(timeout 120 "$PODMAN" pull --quiet "$OFFICIAL_BASE" 2>&1 >/dev/null); then
            base=$OFFICIAL_BASE
            base_note="official"
        else
            say "cannot pull $OFFICIAL_BASE: $(tail -1 <<<"$pull_error")"
            base=local
        fi
    fi
    if [[ $base == local ]]; then
        base=$LOCAL_BASE
        base_note="local mmdebstrap"
        if [[ $no_cache == 1 ]] || ! "$PODMAN" image exists "$LOCAL_BASE"; then
            build_local_base ||
                skip "no base image: $OFFICIAL_BASE cannot be pulled and mmdebstrap failed or is not installed"
        fi
    fi
    base_note=${base_note:-given}
fi

# Can this machine run a container at all? The build runs its RUN steps in containers too,
# so where this fails the build is still tried and its own error shown.
probe_image=$base
if [[ $skip_build == 1 ]]; then
    probe_image=$image
    torch_wheels="(not built here)"
    base_note="(not built here)"
fi
if run_error=$("$PODMAN" run --rm --network=host --entrypoint true "$probe_image" 2>&1); then
    can_run=1
else
    can_run=0
    say "this machine cannot run containers: $run_error"
fi

# ---------------------------------------------------------------- build
build_s=""
if [[ $skip_build == 0 ]]; then
    build_args=(--build-arg "PYTHON_IMAGE=$base")
    # The host's CA bundle: package downloads inside a bare Debian base fail verification
    # where the network's TLS is re-signed. Mounted for the build only, not in the image.
    ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
    [[ -f $ca ]] && build_args+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
    if [[ $torch_wheels == auto ]]; then
        torch_wheels=none
        find_links="${PIP_FIND_LINKS:-} $("$VENV/bin/pip" config get global.find-links 2>/dev/null || true)"
        for dir in $find_links; do
            dir=${dir#file://}
            if compgen -G "$dir/torch-2.13.0+cpu-cp311-*.whl" >/dev/null; then
                torch_wheels=$dir
                break
            fi
        done
    fi
    if [[ $torch_wheels != none ]]; then
        compgen -G "$torch_wheels/torch-2.13.0+cpu-cp311-*.whl" >/dev/null ||
            fail "no torch-2.13.0+cpu-cp311 wheel in $torch_wheels"
        if [[ $can_run == 1 ]]; then
            # The wheel is for CPython 3.11: the base's python must be that version.
            tag=$("$PODMAN" run --rm --network=host --entrypoint python "$base" -c \
                'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
            [[ $tag == cp311 ]] || fail "the base image's python is $tag; the torch wheel is cp311"
        fi
        torch_wheels=$(cd "$torch_wheels" && pwd)
        build_args+=(-v "$torch_wheels:$torch_wheels:ro" --build-arg "TORCH_WHEELS=$torch_wheels")
    fi
    [[ $no_cache == 1 ]] && build_args+=(--no-cache)
    say "building $image from $base (${base_note}), torch from ${torch_wheels/#none/the CPU wheel index}"
    started=$(now_ns)
    set +e
    "$PODMAN" build --network=host "${build_args[@]}" -t "$image" -f Dockerfile . 2>&1 |
        tee "$work/build.log" | grep --line-buffered -E '^\[[0-9]+/[0-9]+\] STEP [0-9]+/[0-9]+: (FROM|RUN|COPY)' | cut -c1-110
    build_rc=${PIPESTATUS[0]}
    set -e
    build_s=$(seconds_since "$started")
    if [[ $build_rc != 0 ]]; then
        tail -30 "$work/build.log"
        [[ $can_run == 0 ]] &&
            skip "this machine cannot run containers ($run_error); the build failed too (log: $work/build.log)"
        fail "podman build exited $build_rc (log: $work/build.log)"
    fi
    say "built $image in $build_s s"
fi

size_bytes=$("$PODMAN" image inspect --format '{{.Size}}' "$image")
size_mb=$(awk -v s="$size_bytes" 'BEGIN { printf "%.0f", s / 1e6 }')
base_size_bytes=""
[[ $skip_build == 0 ]] && base_size_bytes=$("$PODMAN" image inspect --format '{{.Size}}' "$base")
say "image size $size_mb MB${base_size_bytes:+ (base $(awk -v s="$base_size_bytes" 'BEGIN { printf "%.0f", s / 1e6 }') MB)}"
[[ $can_run == 1 ]] ||
    skip "image $image built ($size_mb MB${build_s:+, $build_s s}) but this machine cannot run containers: $run_error"

# ---------------------------------------------------------------- the image's contents
user=$("$PODMAN" run --rm --entrypoint id "$image" -u)
[[ $user != 0 ]] || fail "the image runs as root"
say "runs as uid $user"
present=$("$PODMAN" run --rm --entrypoint python "$image" -c \
    'import importlib.util as u; print(" ".join(m for m in ("torch", "transformers", "optimum") if u.find_spec(m)))')
[[ -z $present ]] || fail "the runtime image holds $present"
say "no torch, transformers or optimum in the runtime image"
# MB of the serving virtual environment and of the int8 models (expanded in the container).
# shellcheck disable=SC2016
read -r venv_mb models_mb < <("$PODMAN" run --rm --entrypoint sh "$image" -c \
    'echo $(du -sm /opt/neuralir | cut -f1) $(du -sm /models | cut -f1)')
say "in it: serving environment $venv_mb MB, int8 models $models_mb MB"
image_model_id=$("$PODMAN" run --rm --entrypoint python "$image" -c \
    'from pathlib import Path; from neuralir.models.manifest import read_manifest; print(read_manifest(Path("/models/bi-encoder/int8")).model_id)')

# ---------------------------------------------------------------- an index, built outside
# The demo corpus (Python's own docs), its first 400 documents, indexed by the host's encoder
# when it is the image's (the models are built deterministically from the same sources), else
# by the image itself.
rm -rf "$work/index" "$work"/index.v* "$work/corpus"
"$VENV/bin/neuralir" data demo --out "$work/corpus" >/dev/null 2>&1
host_model_id=$("$VENV/bin/python" -c \
    'import sys; from pathlib import Path; from neuralir.models.manifest import read_manifest; print(read_manifest(Path(sys.argv[1])).model_id)' \
    "$MODELS/bi-encoder/int8" 2>/dev/null || echo "none")
if [[ $host_model_id == "$image_model_id" ]]; then
    say "index built on the host with $MODELS/bi-encoder/int8 ($host_model_id, as in the image)"
    "$VENV/bin/neuralir" index build --corpus "$work/corpus/corpus.jsonl" --out "$work/index" \
        --encoder-model "$MODELS/bi-encoder/int8" --max-docs 400 >"$work/index.log" 2>&1 ||
        { tail -20 "$work/index.log"; fail "host index build failed"; }
else
    say "host encoder $host_model_id is not the image's $image_model_id: the image builds the index"
    "$PODMAN" run --rm --user "$(id -u):$(id -g)" -v "$work:/work" "$image" \
        index build --corpus /work/corpus/corpus.jsonl --out /work/index --max-docs 400 \
        --encoder-model /models/bi-encoder/int8 \
        >"$work/index.log" 2>&1 || { tail -20 "$work/index.log"; fail "index build in the image failed"; }
fi
index_dir=$(readlink -f "$work/index")

# ---------------------------------------------------------------- run, search, stop
name=neuralir-image-test-$$
trap '"$PODMAN" rm -f "$name" >/dev/null 2>&1 || true' EXIT
publish=(-p 127.0.0.1::50051 -p 127.0.0.1::9100)
started=$(now_ns)
if ! run_error=$("$PODMAN" run -d --name "$name" "${publish[@]}" \
    -v "$index_dir:/index:ro" "$image" serve all 2>&1); then
    # No bridge network here: the host's network instead, on ports free now.
    say "published ports failed ($run_error): using the host's network"
    "$PODMAN" rm -f "$name" >/dev/null 2>&1 || true
    read -r grpc_port metrics_port < <("$VENV/bin/python" -c \
        'import socket; s=[socket.socket() for _ in range(2)]; [x.bind(("127.0.0.1", 0)) for x in s]; print(*(x.getsockname()[1] for x in s))')
    started=$(now_ns)
    "$PODMAN" run -d --name "$name" --network=host -v "$index_dir:/index:ro" "$image" \
        serve all --port "$grpc_port" --metrics-port "$metrics_port" >/dev/null
else
    grpc_port=$("$PODMAN" port "$name" 50051/tcp | head -1 | sed 's/.*://')
    metrics_port=$("$PODMAN" port "$name" 9100/tcp | head -1 | sed 's/.*://')
fi
say "container $name: gRPC on 127.0.0.1:$grpc_port, metrics on :$metrics_port"
if ! "$VENV/bin/python" deploy/image_check.py --target "127.0.0.1:$grpc_port" \
    --started-at-ns "$started" --encoder-model-id "$image_model_id" \
    --metrics-url "http://127.0.0.1:$metrics_port/metrics" >"$work/check.json"; then
    cat "$work/check.json"
    "$PODMAN" logs --tail 40 "$name" 2>&1 || true
    fail "the running image failed its checks"
fi
serving_s=$("$VENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["start_to_serving_s"])' "$work/check.json")
stages=$("$VENV/bin/python" -c 'import json, sys; print(", ".join(f"{k} {v} ms" for k, v in json.load(open(sys.argv[1]))["search"]["stages_ms"].items()))' "$work/check.json")
say "SERVING $serving_s s after podman run; search through every stage: $stages"
started=$(now_ns)
"$PODMAN" stop --time 30 "$name" >/dev/null
stop_s=$(seconds_since "$started")
exit_code=$("$PODMAN" inspect --format '{{.State.ExitCode}}' "$name")
[[ $exit_code == 0 ]] || fail "after SIGTERM the server exited $exit_code (not a graceful stop)"
say "stopped by SIGTERM in $stop_s s, exit code 0"

REPORT_IMAGE=$image REPORT_BASE=$base REPORT_BASE_KIND=$base_note \
    REPORT_TORCH_WHEELS=$torch_wheels REPORT_SIZE=$size_bytes REPORT_BUILD_S=$build_s \
    REPORT_BASE_SIZE=$base_size_bytes REPORT_VENV_MB=$venv_mb REPORT_MODELS_MB=$models_mb \
    REPORT_STOP_S=$stop_s REPORT_UID=$user REPORT_PODMAN=$("$PODMAN" --version) \
    "$VENV/bin/python" - "$work" <<'EOF'
import json, os, platform, sys
from pathlib import Path

work = Path(sys.argv[1])
env = {k.removeprefix("REPORT_").lower(): v for k, v in os.environ.items() if k.startswith("REPORT_")}
check = json.loads((work / "check.json").read_text())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
report = {
    "image": env["image"], "base": env["base"], "base_kind": env["base_kind"],
    "torch_wheels": env["torch_wheels"], "size_bytes": int(env["size"]),
    "base_size_bytes": int(env["base_size"]) if env["base_size"] else None,
    "serving_env_mb": int(env["venv_mb"]), "models_mb": int(env["models_mb"]),
    "build_s": float(env["build_s"]) if env["build_s"] else None,
    "start_to_serving_s": check["start_to_serving_s"], "stop_s": float(env["stop_s"]),
    "uid": int(env["uid"]), "search": check["search"], "podman": env["podman"],
    "host": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release()},
}
(work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
EOF
echo "PASS: $image, base ${base_note}: $size_mb MB, built in ${build_s:-(not built here)} s, SERVING ${serving_s} s after start, uid $user, no torch (report: $work/report.json)"
