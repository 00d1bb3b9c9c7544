#!/usr/bin/env bash
#SBATCH --job-name=jobstrap-js0123456789
#SBATCH --output=/home/ada/.jobstrap/runs/r1/logs/%A_%a.out
#SBATCH --error=/home/ada/.jobstrap/runs/r1/logs/%A_%a.err
#SBATCH --partition=debug
#SBATCH --account=science
#SBATCH --qos=high
#SBATCH --time=0-01:30:00
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --array=0-32
#SBATCH --signal=B:USR1@120
#SBATCH --comment=jobstrap:js0123456789
#SBATCH --no-requeue
# Rendered by jobstrap 0.1.0 for slurm: role workers, tag js0123456789.
set -o pipefail
export JOBSTRAP_JOB_ID="${SLURM_JOB_ID:-}"
export JOBSTRAP_ARRAY_TASK_ID="${SLURM_ARRAY_TASK_ID:-}"
export JOBSTRAP_ROLE=workers
export PATH=/opt/venv/bin"${PATH:+:$PATH}"
export JOBSTRAP_RUN_DIR=/home/ada/.jobstrap/runs/r1
export OMP_NUM_THREADS=1
module load python
# Run the main command in the background so this shell can forward the batch
# system's early-warning signals (walltime, preemption) to it instead of dying.
srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=4 /opt/venv/bin/python -m jobstrap.bootstrap --mode workers &
jobstrap_child=$!
trap 'kill -s TERM "$jobstrap_child" 2>/dev/null' TERM
trap 'kill -s INT "$jobstrap_child" 2>/dev/null' INT
trap 'kill -s USR1 "$jobstrap_child" 2>/dev/null' USR1
trap 'kill -s USR2 "$jobstrap_child" 2>/dev/null' USR2
wait "$jobstrap_child"
jobstrap_rc=$?
while kill -0 "$jobstrap_child" 2>/dev/null; do
  wait "$jobstrap_child"
  jobstrap_rc=$?
done
trap - TERM INT USR1 USR2
echo finished
exit "$jobstrap_rc"
