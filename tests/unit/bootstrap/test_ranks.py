"""Which rank of which world: launcher variables, launch ids, MPI or not."""

from __future__ import annotations

from jobstrap.bootstrap.ranks import discover_world, env_rank, in_slurm_batch_script, launch_id


def test_env_rank_reads_plain_srun_tasks() -> None:
    env = {"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_ID": "0"}

    assert env_rank(env) == (2, 4, "SLURM_PROCID")


def test_env_rank_ignores_the_batch_script_itself() -> None:
    # sbatch gives the batch script SLURM_PROCID=0 and the job's SLURM_NTASKS.
    env = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "3"}

    assert env_rank(env) is None
    assert in_slurm_batch_script(env)


def test_env_rank_prefers_pmi_over_slurm() -> None:
    env = {
        "PMI_RANK": "1",
        "PMI_SIZE": "3",
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_ID": "0",
    }

    assert env_rank(env) == (1, 3, "PMI_RANK")


def test_env_rank_reads_open_mpi() -> None:
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"}

    assert env_rank(env) == (3, 4, "OMPI_COMM_WORLD_RANK")


def test_launch_id_is_shared_by_the_tasks_of_one_step_and_differs_on_requeue() -> None:
    base = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"}

    same = launch_id({**base, "SLURM_PROCID": "3"})
    requeued = launch_id({**base, "SLURM_RESTART_COUNT": "1"})

    assert launch_id(base) == same
    assert launch_id(base) != requeued


def test_discover_world_without_a_launcher_is_a_world_of_one() -> None:
    world = discover_world(use_mpi=False, environ={})

    assert (world.rank, world.size, world.source) == (0, 1, "single")
    assert world.warning is None
