#!/usr/bin/env bash
# A sharded restore as a Slurm job array: task K restores shard K of N.
# N is SLURM_ARRAY_TASK_COUNT and K the task's position in the array,
# (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP, passed
# as --shard K/N (ringdown takes the same K from these variables by itself).
# So --array may be a range, with a step or a throttle: 0-15, 1-16, 0-30:2,
# 0-15%4. A list (1,3,5) works only if its tasks are evenly spaced and
# SLURM_ARRAY_TASK_STEP says so; any other array (1,2,5) exits 2 before
# restoring anything, as its tasks would leave some shards to no one.
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
min=${SLURM_ARRAY_TASK_MIN:?run under sbatch --array}
count=${SLURM_ARRAY_TASK_COUNT:?run under sbatch --array}
step=${SLURM_ARRAY_TASK_STEP:-1}
max=${SLURM_ARRAY_TASK_MAX:-$((min + step * (count - 1)))} # Slurm sets it; assumed regular if not
# Tasks min, min+step, ..., max, count of them: shard (task - min) / step.
if [ "$step" -lt 1 ] || [ "$count" -lt 1 ] || [ $((min + step * (count - 1))) -ne "$max" ] ||
    [ $(((task - min) % step)) -ne 0 ] || [ "$task" -lt "$min" ] || [ "$task" -gt "$max" ]; then
    echo "slurm-array.sh: --array must be a range such as 0-15, 0-30:2 or 0-15%4 (tasks MIN, MIN+STEP, ..., MAX);" \
        "got MIN $min, MAX $max, COUNT $count, STEP $step, this task $task: with these, some shards" \
        "would be restored by no task" >&2
    exit 2
fi
shard=$(((task - min) / step))/$count

# Registered buffers need locked memory; ask for as much as the node allows.
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true

exec "$RINGDOWN" restore "$SOURCE" "$DEST" \
    --shard "$shard" \
    --cores "${SLURM_CPUS_PER_TASK:-4}" \
    --report "$DEST/.ringdown-report-$task.jsonl" \
    --stats-json "$DEST/.ringdown-stats-$task.json"
