#!/usr/bin/env bash
# Create a TPU VM pod, install circuits on every worker, run `launch.train` on all workers at once.
#
#   launch/tpu_pod.sh --name circuits-v4 --zone us-central2-b --accelerator v4-64 --family olmo \
#       --workdir gs://BUCKET/runs/1b/olmo [--config configs/study_1b.py] [--repo URL (default: this checkout's origin)] [--dry-run] \
#       [-- --config.train.steps=1000 ...]
#
# Every worker runs `python -m launch.train --config <config>:<family> --workdir <workdir> --distributed`;
# jax.distributed.initialize() detects the pod's workers itself. --dry-run prints the exact commands.
# Then sweep: `python -m launch.discover --run <workdir> --out <workdir>/sweep` (one worker is enough).
set -euo pipefail

NAME="" ZONE="" ACCEL="v4-64" VERSION="tpu-ubuntu2204-base" FAMILY="" WORKDIR="" CONFIG="configs/study_1b.py"
REPO="$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)" BRANCH="main" DRY=0 PROJECT="" EXTRA=()
usage() { sed -n '2,12p' "$0"; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2;;
    --zone) ZONE="$2"; shift 2;;
    --accelerator) ACCEL="$2"; shift 2;;
    --version) VERSION="$2"; shift 2;;
    --family) FAMILY="$2"; shift 2;;
    --workdir) WORKDIR="$2"; shift 2;;
    --config) CONFIG="$2"; shift 2;;
    --repo) REPO="$2"; shift 2;;
    --branch) BRANCH="$2"; shift 2;;
    --project) PROJECT="$2"; shift 2;;
    --dry-run) DRY=1; shift;;
    -h|--help) usage 0;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "tpu_pod.sh: unknown argument $1" >&2; usage;;
  esac
done
[[ -n "$REPO" ]] || { echo "tpu_pod.sh: --repo URL is required (the git URL the workers clone; this checkout has no 'origin' remote to default to)" >&2; exit 2; }
for v in NAME ZONE FAMILY WORKDIR; do
  [[ -n "${!v}" ]] || { echo "tpu_pod.sh: --$(echo "$v" | tr 'A-Z' 'a-z') is required" >&2; usage; }
done
case "$FAMILY" in pythia|olmo|olmoe) ;; *) echo "tpu_pod.sh: --family must be pythia, olmo or olmoe" >&2; exit 2;; esac

run() {  # print (dry run) or execute one command, quoted exactly as it runs
  if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
G=(gcloud compute tpus tpu-vm)
P=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && P+=(--project "$PROJECT")
INSTALL="set -e; (test -d circuits || git clone --branch $BRANCH $REPO circuits); cd circuits && git pull --ff-only; \
python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==0.10.2' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
TRAIN="cd circuits && .venv/bin/python -m launch.train --config $CONFIG:$FAMILY --workdir $WORKDIR --distributed"
# 1B scale settings: bf16 activations, remat "full" and loss_chunk 256 come with the config (configs/families.py);
# the microbatches follow the mesh: the published 1024 rows over D devices, 4 rows per device per microbatch
# (OLMoE at T 4096: 2) as the configs' 64-device values; OLMoE's experts run megablox gmm (moe_impl=gmm) on TPU.
# D = the pod's jax devices: v4/v5p names count TensorCores (2 per device), v2/v3/v5e/v6e names count devices.
if [[ "$CONFIG" == *study_1b.py ]]; then
  N="${ACCEL##*-}"
  case "$ACCEL" in v4-*|v5p-*) DEVICES=$((N / 2));; *) DEVICES=$N;; esac
  [[ "$N" =~ ^[0-9]+$ && $DEVICES -ge 1 && $((1024 % DEVICES)) == 0 ]] || {
    echo "tpu_pod.sh: cannot split the 1B configs' 1024 rows over the devices of --accelerator $ACCEL" >&2; exit 2; }
  ROWS=$((1024 / DEVICES)) PER=$([[ $FAMILY == olmoe ]] && echo 2 || echo 4)
  TRAIN+=" --config.train.microbatches=$(( ROWS > PER ? ROWS / PER : 1 ))"
  [[ $FAMILY == olmoe ]] && TRAIN+=" --config.model.moe_impl=gmm"
fi
for e in "${EXTRA[@]+"${EXTRA[@]}"}"; do TRAIN+=" $(printf '%q' "$e")"; done

run "${G[@]}" create "$NAME" "${P[@]}" --accelerator-type "$ACCEL" --version "$VERSION"
run "${G[@]}" ssh "$NAME" "${P[@]}" --worker=all --command "$INSTALL"
run "${G[@]}" ssh "$NAME" "${P[@]}" --worker=all --command "$TRAIN"
