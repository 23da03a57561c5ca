#!/usr/bin/env bash
# Create a TPU VM pod, install circuits on every worker, run `launch.train` on all workers at once.
#
#   launch/tpu_pod.sh --name circuits-v4 --zone us-central2-b --accelerator v4-64 --family olmo \
#       --workdir gs://BUCKET/runs/1b/olmo [--config configs/study_1b.py] [--repo URL (default: this checkout's origin)] [--dry-run] \
#       [-- --config.train.steps=1000 ...]
#
# Every worker runs `python -m launch.train --config <config>:<family> --workdir <workdir> --distributed`;
# jax.distributed.initialize() detects the pod's workers itself. --dry-run prints the exact commands.
#
#   launch/tpu_pod.sh --mode discover --name circuits-v4 --zone us-central2-b --accelerator v4-32 \
#       --hf_repo EleutherAI/pythia-1b [--revisions paper] --out /mnt/shared/pythia [--dry-run] [-- launch.discover flags]
#   (or --run W / --hf_revisions FILE instead of --hf_repo)
# Discovery sweep: every worker runs `python -m launch.discover ... --out D --distributed`; worker p measures
# revisions p, p+P, ... of the list, each revision's probe chunks spread over the worker's chips, and worker
# 0 writes the combined table and report. --out must be a folder every worker sees (NFS, Filestore, GCS FUSE).
set -euo pipefail

NAME="" ZONE="" ACCEL="v4-64" VERSION="tpu-ubuntu2204-base" FAMILY="" WORKDIR="" CONFIG="configs/study_1b.py"
REPO="$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)" BRANCH="main" DRY=0 PROJECT="" EXTRA=()
MODE="train" HF_REPO="" REVISIONS="paper" RUN="" HF_REVISIONS="" OUT=""
usage() { sed -n '2,16p' "$0"; exit "${1:-2}"; }
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
    --mode) MODE="$2"; shift 2;;
    --hf_repo) HF_REPO="$2"; shift 2;;
    --revisions) REVISIONS="$2"; shift 2;;
    --run) RUN="$2"; shift 2;;
    --hf_revisions) HF_REVISIONS="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    --dry-run) DRY=1; shift;;
    -h|--help) usage 0;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "tpu_pod.sh: unknown argument $1" >&2; usage;;
  esac
done
[[ -n "$REPO" ]] || { echo "tpu_pod.sh: --repo URL is required (the git URL the workers clone; this checkout has no 'origin' remote to default to)" >&2; exit 2; }
case "$MODE" in train) REQ="NAME ZONE FAMILY WORKDIR";; discover) REQ="NAME ZONE OUT";;
  *) echo "tpu_pod.sh: --mode must be train or discover" >&2; exit 2;; esac
for v in $REQ; do
  [[ -n "${!v}" ]] || { echo "tpu_pod.sh: --$(echo "$v" | tr 'A-Z' 'a-z') is required (--mode $MODE)" >&2; usage; }
done
if [[ $MODE == train ]]; then
  case "$FAMILY" in pythia|olmo|olmoe) ;; *) echo "tpu_pod.sh: --family must be pythia, olmo or olmoe" >&2; exit 2;; esac
else
  n=0; for v in HF_REPO RUN HF_REVISIONS; do [[ -n "${!v}" ]] && n=$((n + 1)); done
  [[ $n == 1 ]] || { echo "tpu_pod.sh: --mode discover needs exactly one of --hf_repo REPO, --run W, --hf_revisions FILE" >&2; exit 2; }
fi

run() {  # print (dry run) or execute one command, quoted exactly as it runs
  if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
G=(gcloud compute tpus tpu-vm)
P=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && P+=(--project "$PROJECT")
INSTALL="set -e; (test -d circuits || git clone --branch $BRANCH $REPO circuits); cd circuits && git pull --ff-only; \
python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt 'jax[tpu]==0.10.2' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
if [[ $MODE == train ]]; then
  TRAIN="cd circuits && .venv/bin/python -m launch.train --config $CONFIG:$FAMILY --workdir $WORKDIR --distributed"
  # 1B scale settings: bf16 activations, remat "full" and loss_chunk 256 come with the config (configs/families.py);
  # the microbatches follow the mesh: the published 1024 rows over D devices, 8 rows per device per microbatch
  # (OLMoE at T 4096: 4) as the configs' 64-device values; OLMoE's experts run megablox gmm (moe_impl=gmm) on TPU.
  # D = the pod's jax devices: v4/v5p names count TensorCores (2 per device), v2/v3/v5e/v6e names count devices.
  if [[ "$CONFIG" == *study_1b.py ]]; then
    N="${ACCEL##*-}"
    case "$ACCEL" in v4-*|v5p-*) DEVICES=$((N / 2));; *) DEVICES=$N;; esac
    [[ "$N" =~ ^[0-9]+$ && $DEVICES -ge 1 && $((1024 % DEVICES)) == 0 ]] || {
      echo "tpu_pod.sh: cannot split the 1B configs' 1024 rows over the devices of --accelerator $ACCEL" >&2; exit 2; }
    ROWS=$((1024 / DEVICES)) PER=$([[ $FAMILY == olmoe ]] && echo 4 || echo 8)
    TRAIN+=" --config.train.microbatches=$(( ROWS > PER ? ROWS / PER : 1 ))"
    [[ $FAMILY == olmoe ]] && TRAIN+=" --config.model.moe_impl=gmm"
  fi
else
  TRAIN="cd circuits && .venv/bin/python -m launch.discover"
  if [[ -n "$HF_REPO" ]]; then TRAIN+=" --hf_repo $(printf '%q' "$HF_REPO") --revisions $(printf '%q' "$REVISIONS")"
  elif [[ -n "$RUN" ]]; then TRAIN+=" --run $(printf '%q' "$RUN")"
  else TRAIN+=" --hf_revisions $(printf '%q' "$HF_REVISIONS")"; fi
  TRAIN+=" --out $(printf '%q' "$OUT") --distributed"
fi
for e in "${EXTRA[@]+"${EXTRA[@]}"}"; do TRAIN+=" $(printf '%q' "$e")"; done

run "${G[@]}" create "$NAME" "${P[@]}" --accelerator-type "$ACCEL" --version "$VERSION"
run "${G[@]}" ssh "$NAME" "${P[@]}" --worker=all --command "$INSTALL"
run "${G[@]}" ssh "$NAME" "${P[@]}" --worker=all --command "$TRAIN"
