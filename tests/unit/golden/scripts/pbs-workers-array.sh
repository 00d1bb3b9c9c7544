#!/usr/bin/env bash
#PBS -N jobstrap-js0123456789
#PBS -q debug
#PBS -A science
#PBS -l select=1:ncpus=4:mpiprocs=1:mem=8gb
#PBS -l walltime=01:30:00
#PBS -J 0-9
#PBS -o /home/ada/.jobstrap/runs/r1/logs/
#PBS -e /home/ada/.jobstrap/runs/r1/logs/
# Rendered by jobstrap 0.1.0 for pbs: role workers, tag js0123456789.
set -o pipefail
exec >/home/ada/.jobstrap/runs/r1/logs/"${PBS_JOBID%%\[*}_${PBS_ARRAY_INDEX}".out 2>/home/ada/.jobstrap/runs/r1/logs/"${PBS_JOBID%%\[*}_${PBS_ARRAY_INDEX}".err
export JOBSTRAP_JOB_ID="${PBS_JOBID:-}"
export JOBSTRAP_ARRAY_TASK_ID="${PBS_ARRAY_INDEX:-}"
export JOBSTRAP_ROLE=workers
export PATH=/opt/venv/bin"${PATH:+:$PATH}"
export JOBSTRAP_RUN_DIR=/home/ada/.jobstrap/runs/r1
export OMP_NUM_THREADS=1
module load python
# Run the main command in the background so this shell can forward the batch
# system's early-warning signals (walltime, preemption) to it instead of dying.
/opt/venv/bin/python -m jobstrap.bootstrap --mode workers &
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
