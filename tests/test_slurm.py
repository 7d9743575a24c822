"""SLURM launch arguments (toolkit/slurm.py) on a fake 2-node allocation, and the sbatch examples' syntax."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.utils import ROOT, run_env
from toolkit.slurm import accelerate_args_from_slurm, expand_nodelist

SLURM_DIR = ROOT / "examples" / "slurm"


def fake_env(node_id: int, **extra) -> dict[str, str]:
    """The variables srun gives the task on node ``node_id`` of a 2-node, 4-GPU-per-node job."""
    env = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NAME": "brats-a", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_NODEID": str(node_id), "SLURM_PROCID": str(node_id),
           "SLURM_GPUS_ON_NODE": "4"}
    return env | extra


@pytest.mark.parametrize("node_id", [0, 1])
def test_two_ranks_of_one_allocation(node_id):
    args = accelerate_args_from_slurm(fake_env(node_id), use_scontrol=False)
    flags = dict(zip(args[::2], args[1::2]))
    assert flags == {"--num_machines": "2", "--machine_rank": str(node_id), "--main_process_ip": "node01",
                     "--main_process_port": str(29500 + 123456 % 1000), "--num_processes": "8"}


def test_both_ranks_agree_on_address_and_port():
    a, b = (dict(zip(x[::2], x[1::2])) for x in
            (accelerate_args_from_slurm(fake_env(k), use_scontrol=False) for k in (0, 1)))
    assert (a["--main_process_ip"], a["--main_process_port"]) == (b["--main_process_ip"], b["--main_process_port"])
    assert a["--machine_rank"] != b["--machine_rank"]


def test_gpus_per_node_forms_and_port_override():
    env = fake_env(1, SLURM_GPUS_ON_NODE="", SLURM_GPUS_PER_NODE="h100:2", MAIN_PROCESS_PORT="31000")
    env.pop("SLURM_NODEID")  # falls back to SLURM_PROCID
    args = accelerate_args_from_slurm(env, use_scontrol=False)
    assert args[args.index("--num_processes") + 1] == "4"
    assert args[args.index("--main_process_port") + 1] == "31000"
    assert args[args.index("--machine_rank") + 1] == "1"


@pytest.mark.parametrize("nodelist, hosts", [
    ("node[01-02]", ["node01", "node02"]),
    ("gpu7", ["gpu7"]),
    ("a[1,3-4],b", ["a1", "a3", "a4", "b"]),
    ("n[08-10]-ib", ["n08-ib", "n09-ib", "n10-ib"]),
    ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("env_change, message", [
    ({"SLURM_NNODES": ""}, "SLURM_NNODES"),
    ({"SLURM_NODEID": "2", "SLURM_PROCID": "2"}, "rank < nodes"),
    ({"SLURM_JOB_NODELIST": "node[01-03]"}, "names 3 hosts"),
    ({"SLURM_JOB_NODELIST": "node[02-01]"}, "bad range"),
    ({"SLURM_GPUS_ON_NODE": ""}, "PROCS_PER_NODE"),
    ({"SLURM_GPUS_ON_NODE": "four"}, "SLURM_GPUS_ON_NODE"),
])
def test_bad_variables_are_named(env_change, message):
    with pytest.raises(ValueError, match=message):
        accelerate_args_from_slurm(fake_env(0) | env_change, use_scontrol=False)


def test_module_prints_one_flag_per_line():
    env = run_env(**fake_env(1), PATH="/usr/bin:/bin")  # no scontrol config here: the Python expansion answers
    out = subprocess.run([sys.executable, "-m", "toolkit.slurm"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["--num_machines", "2", "--machine_rank", "1"]
    missing = subprocess.run([sys.executable, "-m", "toolkit.slurm"], cwd=ROOT, capture_output=True, text=True,
                             env={k: v for k, v in run_env().items() if not k.startswith("SLURM_")}, timeout=60)
    assert missing.returncode == 2 and "SLURM_NNODES" in missing.stderr


@pytest.mark.parametrize("name", ["multinode.sbatch", "single_node.sbatch", "launch.sh"])
def test_scripts_parse_with_bash_n(name):
    out = subprocess.run(["bash", "-n", str(SLURM_DIR / name)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name, nodes", [("multinode.sbatch", "2"), ("single_node.sbatch", "1")])
def test_sbatch_scripts_resume_and_signal(name, nodes):
    text = (SLURM_DIR / name).read_text()
    for line in ("#SBATCH --signal=USR1@120", "#SBATCH --requeue", f"#SBATCH --nodes={nodes}"):
        assert line in text.splitlines(), line
    assert "--resume auto" in text and 'srun --ntasks-per-node=1' in text and "examples/slurm/launch.sh" in text


def test_launch_sh_passes_slurm_args_to_accelerate(tmp_path):
    """launch.sh with a stand-in PYTHON that echoes its arguments: the launch line it would exec."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\nif [ "$1 $2" = "-m toolkit.slurm" ]; then exec {sys.executable} "$@"; fi\n'
                    'echo "$@"\n')
    fake.chmod(0o755)
    env = run_env(**fake_env(1), PYTHON=str(fake), PATH="/usr/bin:/bin", LAUNCH_EXTRA="--cpu")
    out = subprocess.run([str(SLURM_DIR / "launch.sh"), "recipes/brain_mri.py", "--resume", "auto"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["-m", "accelerate.commands.launch", "--config_file", "accelerate_config.yaml",
                                  "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "node01",
                                  "--main_process_port", "29956", "--num_processes", "8", "--cpu",
                                  "recipes/brain_mri.py", "--resume", "auto"]


@pytest.mark.skipif(os.environ.get("TOOLKIT_SLURM_CHECK") != "1",
                    reason="real SLURM (about 4 minutes): TOOLKIT_SLURM_CHECK=1, or make slurm-check")
def test_real_slurm_usr1_requeue_resume(tmp_path):
    """examples/slurm/local_check.sh: a one-node SLURM on localhost, USR1, requeue, resume, completed, and bit-identical
    to the same command run without interruption."""
    out = subprocess.run([str(SLURM_DIR / "local_check.sh")], cwd=ROOT, capture_output=True, text=True,
                         env=run_env(WORK=str(tmp_path / "slurm"), EPOCHS="10"), timeout=1200)
    if out.returncode == 77:
        pytest.skip(out.stderr.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "COMPLETED after 1 requeue(s)" in out.stdout and "bit-identical:" in out.stdout
