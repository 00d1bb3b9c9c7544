#!/usr/bin/env bash
#JOBSTRAP --job-name=jobstrap-js0123456789
#JOBSTRAP --output=/home/ada/.jobstrap/runs/r1/logs/%j.out
#JOBSTRAP --error=/home/ada/.jobstrap/runs/r1/logs/%j.err
#JOBSTRAP --time=5400
#JOBSTRAP --ntasks=3
# Rendered by jobstrap 0.1.0 for local: role app, tag js0123456789.
set -o pipefail
export JOBSTRAP_JOB_ID="${JOBSTRAP_JOB_ID:-}"
export JOBSTRAP_ARRAY_TASK_ID="${JOBSTRAP_ARRAY_TASK_ID:-}"
export JOBSTRAP_ROLE=app
export PATH=/opt/venv/bin"${PATH:+:$PATH}"
export JOBSTRAP_RUN_DIR=/home/ada/.jobstrap/runs/r1
export OMP_NUM_THREADS=1
module load python
jobstrap_exit_file=/home/ada/.jobstrap/runs/r1/exit_code
# A rerun of this job (requeued) must not take the last run's exit code for its own.
rm -f "$jobstrap_exit_file"
# Run the main command in the background so this shell can forward the batch
# system's early-warning signals (walltime, preemption) to it instead of dying.
mpiexec -n 3 /opt/venv/bin/python -m jobstrap.bootstrap --mode workers &
jobstrap_child=$!
trap 'kill -s TERM "$jobstrap_child" 2>/dev/null' TERM
trap 'kill -s INT "$jobstrap_child" 2>/dev/null' INT
trap 'kill -s USR1 "$jobstrap_child" 2>/dev/null' USR1
trap 'kill -s USR2 "$jobstrap_child" 2>/dev/null' USR2
# The app's end is the job's end. A launcher can wait forever for ranks it never
# hears from again (their node was cut off the network and came back, and the news
# that they had exited was lost): once the app has written its exit code, the ranks
# get a minute to stop, then the launcher is ended.
(
  until [ -e "$jobstrap_exit_file" ]; do
    kill -0 "$jobstrap_child" 2>/dev/null || exit 0
    sleep 5
  done
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do
    kill -0 "$jobstrap_child" 2>/dev/null || exit 0
    sleep 5
  done
  echo "jobstrap: the app ended a minute ago but its launcher still waits for ranks; ending it" >&2
  kill -s KILL "$jobstrap_child" 2>/dev/null
) &
jobstrap_reaper=$!
wait "$jobstrap_child"
jobstrap_rc=$?
while kill -0 "$jobstrap_child" 2>/dev/null; do
  wait "$jobstrap_child"
  jobstrap_rc=$?
done
trap - TERM INT USR1 USR2
kill "$jobstrap_reaper" 2>/dev/null
# The job ends with the app's exit code, whatever the launcher made of the ranks.
jobstrap_app_rc=$(cat "$jobstrap_exit_file" 2>/dev/null)
case $jobstrap_app_rc in
  '' | *[!0-9]*) ;;
  *) jobstrap_rc=$jobstrap_app_rc ;;
esac
echo finished
exit "$jobstrap_rc"
