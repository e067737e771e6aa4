#!/usr/bin/env bash
# A sharded restore as a Slurm job array: task K restores shard K of N.
# ringdown reads SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN as K and
# SLURM_ARRAY_TASK_COUNT as N, so any --array range works (0-15, 1-16, ...).
# Shards are chosen by SHA-1 of the object name: every object is restored by
# exactly one task, and a requeued task resumes from its own journal
# (DEST/.ringdown/journal-K-of-N).
#
#   sbatch --export=ALL,SOURCE=b2://my-bucket/datasets,DEST=/scratch/datasets deploy/slurm-array.sh
#
#SBATCH --job-name=ringdown-restore
#SBATCH --array=0-15
#SBATCH --cpus-per-task=4
#SBATCH --mem=1G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=ringdown-%A_%a.log
set -euo pipefail

: "${SOURCE:?set SOURCE=b2://BUCKET[/PREFIX]}"
: "${DEST:?set DEST=/path/to/restore}"
: "${B2_APPLICATION_KEY_ID:?}" "${B2_APPLICATION_KEY:?}"
RINGDOWN=${RINGDOWN:-ringdown}
task=${SLURM_ARRAY_TASK_ID:?run under sbatch --array}

# Registered buffers need locked memory; ask for as much as the node allows.
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true

exec "$RINGDOWN" restore "$SOURCE" "$DEST" \
    --cores "${SLURM_CPUS_PER_TASK:-4}" \
    --report "$DEST/.ringdown-report-$task.jsonl" \
    --stats-json "$DEST/.ringdown-stats-$task.json"
