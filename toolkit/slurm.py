"""``accelerate launch`` arguments from a SLURM job's environment (examples/slurm/, docs/clusters.md).

One ``accelerate launch`` per node (``srun --ntasks-per-node=1``); each gets

    --num_machines $SLURM_NNODES --machine_rank $SLURM_NODEID
    --main_process_ip <first host of $SLURM_JOB_NODELIST> --main_process_port <port>
    --num_processes <processes per node x nodes>

    python -m toolkit.slurm          # prints them, one per line (examples/slurm/launch.sh reads them)

The first host comes from ``scontrol show hostnames`` when that works, else from
:func:`expand_nodelist` (the same expansion, in Python). The port is ``$MAIN_PROCESS_PORT`` when set,
else ``29500 + SLURM_JOB_ID % 1000``: the same on every node of a job, different for jobs sharing a node.
Processes per node: ``$PROCS_PER_NODE``, else ``$SLURM_GPUS_ON_NODE``, else ``$SLURM_GPUS_PER_NODE``
(``4`` or ``h100:4``); never guessed: when none is set, the error names the variables.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping

__all__ = ["expand_nodelist", "first_host", "procs_per_node", "main_port", "accelerate_args_from_slurm"]

_BRACKET = re.compile(r"^(?P<prefix>[^\[\],]*)\[(?P<ranges>[^\]]+)\](?P<rest>.*)$")


def _split_top(nodelist: str) -> list[str]:
    """Split ``a[1-2],b,c[3,5]`` on the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    parts.append(nodelist[start:])
    return [p.strip() for p in parts if p.strip()]


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a SLURM node list, in order: ``"node[01-02],gpu7"`` -> ``["node01", "node02", "gpu7"]``.

    Handles comma lists, ``prefix[a-b,c]`` ranges (zero padding kept from ``a``) and a suffix after the
    bracket, nested once (``rack[1-2]-n[1-2]``). Raises ValueError naming the list for anything else."""
    if not isinstance(nodelist, str) or not nodelist.strip():
        raise ValueError(f"SLURM_JOB_NODELIST: expected a node list like 'node[01-02]', got {nodelist!r}")
    hosts: list[str] = []
    for part in _split_top(nodelist.strip()):
        match = _BRACKET.match(part)
        if match is None:
            if "[" in part or "]" in part:
                raise ValueError(f"SLURM_JOB_NODELIST {nodelist!r}: cannot read {part!r}")
            hosts.append(part)
            continue
        tails = expand_nodelist(match["rest"]) if "[" in match["rest"] else [match["rest"]]
        for item in match["ranges"].split(","):
            lo, _, hi = item.strip().partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
                raise ValueError(f"SLURM_JOB_NODELIST {nodelist!r}: bad range {item!r} (expected N or N-M, N <= M)")
            for k in range(int(lo), int(hi or lo) + 1):
                hosts.extend(f"{match['prefix']}{k:0{len(lo)}d}{tail}" for tail in tails)
    return hosts


def first_host(nodelist: str, use_scontrol: bool = True) -> str:
    """The first host of ``nodelist``: ``scontrol show hostnames`` when it answers, else :func:`expand_nodelist`."""
    if use_scontrol and shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=20)
            if out.returncode == 0 and out.stdout.split():
                return out.stdout.split()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return expand_nodelist(nodelist)[0]


def _int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        number = int(str(value).split("(")[0])  # SLURM_TASKS_PER_NODE style "2(x3)"
    except ValueError:
        raise ValueError(f"{name}: expected a whole number, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name}: expected >= 0, got {value!r}")
    return number


def procs_per_node(env: Mapping[str, str]) -> int:
    """Training processes per node (>= 1): PROCS_PER_NODE, SLURM_GPUS_ON_NODE or SLURM_GPUS_PER_NODE."""
    for name in ("PROCS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        if env.get(name):
            raw = str(env[name]).split(",")[0].rsplit(":", 1)[-1]  # "h100:4" -> "4"
            number = _int({name: raw}, name)
            if number >= 1:
                return number
    raise ValueError("processes per node: none of PROCS_PER_NODE, SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE is set "
                     "to a number >= 1 (request GPUs with '#SBATCH --gpus-per-node=N' or set PROCS_PER_NODE)")


def main_port(env: Mapping[str, str]) -> int:
    """MAIN_PROCESS_PORT, else 29500 + SLURM_JOB_ID % 1000 (the same on every node of one job)."""
    if env.get("MAIN_PROCESS_PORT"):
        port = _int(env, "MAIN_PROCESS_PORT")
        if not 1024 <= port <= 65535:
            raise ValueError(f"MAIN_PROCESS_PORT: expected 1024..65535, got {port}")
        return port
    return 29500 + _int(env, "SLURM_JOB_ID") % 1000


def accelerate_args_from_slurm(env: Mapping[str, str] | None = None, use_scontrol: bool = True) -> list[str]:
    """``accelerate launch`` flags for this node of a SLURM job (strings, in a fixed order):

    ``--num_machines N --machine_rank R --main_process_ip HOST --main_process_port PORT --num_processes P``
    with N = SLURM_NNODES, R = SLURM_NODEID (else SLURM_PROCID; 0 <= R < N), HOST the first host of
    SLURM_JOB_NODELIST, P = processes per node x N (:func:`procs_per_node`). ``env`` defaults to os.environ.
    Raises ValueError naming the variable that is missing or wrong."""
    env = os.environ if env is None else env
    for name in ("SLURM_NNODES", "SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        if not env.get(name):
            raise ValueError(f"{name} is not set: run inside a SLURM job (sbatch/srun)")
    nodes = _int(env, "SLURM_NNODES")
    rank_var = "SLURM_NODEID" if env.get("SLURM_NODEID") else "SLURM_PROCID"
    if not env.get(rank_var):
        raise ValueError("SLURM_NODEID and SLURM_PROCID are not set: start this once per node with srun")
    rank = _int(env, rank_var)
    if nodes < 1 or rank >= nodes:
        raise ValueError(f"{rank_var}={rank} with SLURM_NNODES={nodes}: expected 0 <= rank < nodes")
    hosts = expand_nodelist(env["SLURM_JOB_NODELIST"])
    if len(hosts) != nodes:
        raise ValueError(f"SLURM_JOB_NODELIST {env['SLURM_JOB_NODELIST']!r} names {len(hosts)} hosts, "
                         f"SLURM_NNODES is {nodes}")
    host = first_host(env["SLURM_JOB_NODELIST"], use_scontrol=use_scontrol)
    return ["--num_machines", str(nodes), "--machine_rank", str(rank), "--main_process_ip", host,
            "--main_process_port", str(main_port(env)), "--num_processes", str(procs_per_node(env) * nodes)]


if __name__ == "__main__":
    try:
        print("\n".join(accelerate_args_from_slurm()))
    except ValueError as err:
        print(f"toolkit.slurm: {err}", file=sys.stderr)
        sys.exit(2)
