#!/usr/bin/env bash
# Train one family of the 1B study on a SLURM GPU cluster: one task per node, all GPUs of a node per task.
#
#   launch/slurm_gpu.sh --family pythia --workdir /shared/runs/1b/pythia --nodes 4 --gpus-per-node 8 \
#       [--config configs/study_1b.py] [--partition gpu] [--time 48:00:00] [--dry-run] [-- extra launch.train flags]
#
# Writes an sbatch script (<workdir>/slurm/train.sbatch) whose `srun` runs
# `python -m launch.train --config <config>:<family> --workdir <workdir> --distributed` on every node;
# jax.distributed.initialize() reads the SLURM environment. --dry-run prints the script and the sbatch
# command instead of writing and submitting. Run from the repository root (with .venv installed).
#
#   launch/slurm_gpu.sh --mode discover --hf_repo EleutherAI/pythia-1b [--revisions paper] --out /shared/disc/pythia \
#       --nodes 2 --gpus-per-node 8 [--partition gpu] [--time 12:00:00] [--dry-run] [-- extra launch.discover flags]
#   (or --run W / --hf_revisions FILE instead of --hf_repo)
# Discovery sweep: <out>/slurm/discover.sbatch runs `python -m launch.discover ... --out <out> --distributed`
# on every node; node p measures revisions p, p+P, ..., each revision's probe chunks spread over the node's
# GPUs, and node 0 writes the combined table and report (<out> on a file system every node sees).
set -euo pipefail

FAMILY="" WORKDIR="" NODES=1 GPUS=8 CONFIG="configs/study_1b.py" PARTITION="" TIME="48:00:00" DRY=0 EXTRA=()
MODE="train" HF_REPO="" REVISIONS="paper" RUN="" HF_REVISIONS="" OUT=""
usage() { sed -n '2,17p' "$0"; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --family) FAMILY="$2"; shift 2;;
    --workdir) WORKDIR="$2"; shift 2;;
    --nodes) NODES="$2"; shift 2;;
    --gpus-per-node) GPUS="$2"; shift 2;;
    --config) CONFIG="$2"; shift 2;;
    --partition) PARTITION="$2"; shift 2;;
    --time) TIME="$2"; shift 2;;
    --mode) MODE="$2"; shift 2;;
    --hf_repo) HF_REPO="$2"; shift 2;;
    --revisions) REVISIONS="$2"; shift 2;;
    --run) RUN="$2"; shift 2;;
    --hf_revisions) HF_REVISIONS="$2"; shift 2;;
    --out) OUT="$2"; shift 2;;
    --dry-run) DRY=1; shift;;
    -h|--help) usage 0;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "slurm_gpu.sh: unknown argument $1" >&2; usage;;
  esac
done
if [[ $MODE == train ]]; then
  [[ -n "$FAMILY" && -n "$WORKDIR" ]] || { echo "slurm_gpu.sh: --family and --workdir are required" >&2; usage; }
  case "$FAMILY" in pythia|olmo|olmoe) ;; *) echo "slurm_gpu.sh: --family must be pythia, olmo or olmoe" >&2; exit 2;; esac
  TRAIN=".venv/bin/python -m launch.train --config $CONFIG:$FAMILY --workdir $WORKDIR --distributed"
  # 1B scale settings: bf16 activations, remat "full" and loss_chunk 256 come with the config (configs/families.py);
  # the microbatches follow the mesh: the published 1024 rows over nodes x gpus-per-node devices, 8 rows per device
  # per microbatch (OLMoE at T 4096: 4) as the configs' 64-device values; OLMoE's experts run jax.lax.ragged_dot
  # (moe_impl=ragged; whether XLA:GPU keeps it grouped is unmeasured: run `make device-check` first).
  if [[ "$CONFIG" == *study_1b.py ]]; then
    DEVICES=$((NODES * GPUS))
    [[ $DEVICES -ge 1 && $((1024 % DEVICES)) == 0 ]] || {
      echo "slurm_gpu.sh: cannot split the 1B configs' 1024 rows over $NODES x $GPUS GPUs" >&2; exit 2; }
    ROWS=$((1024 / DEVICES)) PER=$([[ $FAMILY == olmoe ]] && echo 4 || echo 8)
    TRAIN+=" --config.train.microbatches=$(( ROWS > PER ? ROWS / PER : 1 ))"
    [[ $FAMILY == olmoe ]] && TRAIN+=" --config.model.moe_impl=ragged"
  fi
  JOB="circuits-$FAMILY" SB="$WORKDIR/slurm/train.sbatch"
elif [[ $MODE == discover ]]; then
  [[ -n "$OUT" ]] || { echo "slurm_gpu.sh: --mode discover needs --out D" >&2; usage; }
  n=0; for v in HF_REPO RUN HF_REVISIONS; do [[ -n "${!v}" ]] && n=$((n + 1)); done
  [[ $n == 1 ]] || { echo "slurm_gpu.sh: --mode discover needs exactly one of --hf_repo REPO, --run W, --hf_revisions FILE" >&2; exit 2; }
  TRAIN=".venv/bin/python -m launch.discover"
  if [[ -n "$HF_REPO" ]]; then TRAIN+=" --hf_repo $(printf '%q' "$HF_REPO") --revisions $(printf '%q' "$REVISIONS")"
  elif [[ -n "$RUN" ]]; then TRAIN+=" --run $(printf '%q' "$RUN")"
  else TRAIN+=" --hf_revisions $(printf '%q' "$HF_REVISIONS")"; fi
  TRAIN+=" --out $(printf '%q' "$OUT") --distributed --noprogress"
  WORKDIR="$OUT" JOB="circuits-discover" SB="$OUT/slurm/discover.sbatch"
else
  echo "slurm_gpu.sh: --mode must be train or discover" >&2; exit 2
fi
for e in "${EXTRA[@]+"${EXTRA[@]}"}"; do TRAIN+=" $(printf '%q' "$e")"; done
SCRIPT="#!/usr/bin/env bash
#SBATCH --job-name=$JOB
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --time=$TIME
#SBATCH --output=$WORKDIR/slurm/%j.out
${PARTITION:+#SBATCH --partition=$PARTITION
}set -euo pipefail
cd $(printf '%q' "$PWD")
srun $TRAIN"
if [[ $DRY == 1 ]]; then
  echo "# $SB"
  echo "$SCRIPT"
  echo "# submit:"
  printf '%q ' sbatch "$SB"; echo
else
  mkdir -p "$WORKDIR/slurm"
  printf '%s\n' "$SCRIPT" > "$SB"
  sbatch "$SB"
fi
