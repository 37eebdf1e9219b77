"""One w21 training process: w05's GPT through DeepSpeed ZeRO-2, with DeepSpeed checkpoints so that a job whose
host died resumes where it stopped. Every host's launcher starts it, e.g. on node 1 of 2:

    python -m torch.distributed.run --nnodes 2 --node-rank 1 --nproc-per-node 1 --master-addr node0 \
        --master-port 29500 -m impl.w21_infra.worker --run-dir /artifacts/w21 --profile cpu
    deepspeed --no_ssh --node_rank 1 --num_nodes 2 --num_gpus 1 --master_addr node0 --master_port 29500 \
        --module impl.w21_infra.worker --run-dir /artifacts/w21 --profile cpu

The model, data, batches, optimizer, schedule and ZeRO config are w05's (impl/w05_deepspeed/train.py), so the
global batch of step s is a function of (seed, s) whatever the number of hosts: rank r of W takes its slice.
A checkpoint (DeepSpeed's own: each rank's ZeRO partition of the optimizer state, the model, the scheduler) is
saved after every `fault.checkpoint_every` steps into <run-dir>/checkpoints, which all hosts share (a shared
volume on a cluster); once every rank has written its part, rank 0 names it in checkpoints/complete. A job with
`resume` continues from the checkpoint named there, or starts at step 0 when there is none (a cluster's first
launch); one with `require_checkpoint` (the fault check's relaunch) stops with an error instead.

Each node's first process writes <run-dir>/progress/node<i>.json when it starts a step (step, time, pid, the
last step's seconds): how far each node is, for whoever watches the job (the fault check kills host 1 mid-step
from it; a cluster's monitor can spot a stalled node).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from impl.core.artifacts import environment, write_json
from impl.core.distributed import init_from_env, leave, shutdown
from impl.w01_gpt.data import batch, prepare
from impl.w01_gpt.model import GPT
from impl.w01_gpt.train import gpt_config, lr_at, make_optimizer
from impl.w05_deepspeed.train import base_optimizer, deepspeed_config


COMPLETE = "complete"  # in the checkpoint directory: the tag of the newest checkpoint every rank finished writing


def complete_checkpoint(ckpt_dir: Path) -> tuple[str, int] | None:
    """(tag, step) of the newest checkpoint all ranks finished writing, or None. Not DeepSpeed's `latest`: rank 0
    writes that as soon as its own files are saved, before the barrier that waits for the other ranks' ZeRO
    partitions (deepspeed 0.19.8, engine.save_checkpoint), so a host lost mid-save can leave `latest` naming a
    checkpoint with a partition missing."""
    path = ckpt_dir / COMPLETE
    if not path.exists():
        return None
    tag = path.read_text().strip()
    return tag, int(tag.removeprefix("step"))


def node_layout(rank: int, world: int) -> tuple[int, int]:
    """(this process's node rank, the number of nodes), from what the launcher set: torchrun GROUP_RANK and
    GROUP_WORLD_SIZE, DeepSpeed's launcher (deepspeed/launcher/launch.py, 0.19.8) CROSS_RANK and CROSS_SIZE; it
    sets no LOCAL_WORLD_SIZE, so rank // LOCAL_WORLD_SIZE took every process for a node of its own."""
    env = os.environ
    for node, nodes in (("GROUP_RANK", "GROUP_WORLD_SIZE"), ("CROSS_RANK", "CROSS_SIZE")):
        if node in env and nodes in env:
            return int(env[node]), int(env[nodes])
    if world == 1:
        return 0, 1
    raise SystemExit(f"rank {rank} of {world}: the launcher set neither torchrun's GROUP_RANK/GROUP_WORLD_SIZE "
                     "nor DeepSpeed's CROSS_RANK/CROSS_SIZE, so this process cannot tell which node it is on")


def _report_progress(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)  # a reader never sees half a record


def train_process(job: dict, run_dir: Path) -> None:
    from impl.w21_infra.spec import GPTSpec

    spec = GPTSpec.model_validate(job["gpt"])
    ckpt_dir = run_dir / "checkpoints"
    if job.get("require_checkpoint") and complete_checkpoint(ckpt_dir) is None:
        # a relaunch that must resume: starting at step 0 would quietly repeat the uninterrupted run
        raise SystemExit(f"this job must resume from a checkpoint, but {ckpt_dir / COMPLETE} does not exist (no "
                         "checkpoint was completely saved before the host was lost, or the checkpoint directory is "
                         "not the one the killed run wrote)")
    rank, world, device = init_from_env()
    t = spec.train
    per_rank_seqs = t.batch_size // world
    micro = per_rank_seqs // t.grad_accum
    data = prepare(spec.data, spec.tokenizer)
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    model = GPT(gpt_config(spec, data.vocab_size)).to(device)
    opt = make_optimizer(model, spec, torch.optim.AdamW)  # DeepSpeed's ZeRO takes only its tested types
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, spec) / t.lr if t.lr else 0.0)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    ds_config = deepspeed_config(spec, world)
    engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_config)
    node_rank, nodes = node_layout(rank, world)
    progress = None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one report per node
        progress = run_dir / "progress" / f"node{node_rank}.json"
        progress.parent.mkdir(exist_ok=True)

    start = 0
    found = complete_checkpoint(ckpt_dir) if job.get("resume") else None
    if found:
        tag, start = found
        if not job.get("fresh_weights"):  # the sabotage twin: the checkpoint's step, but nothing loaded
            _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
            if int(client["next_step"]) != start:
                raise SystemExit(f"checkpoint {ckpt_dir / tag} says next_step {client['next_step']}, its tag {start}")
    log_path = run_dir / f"train_log{job.get('log_suffix', '')}.jsonl"
    if rank == 0:
        write_json(run_dir / "ds_config.json", ds_config)
        log_path.write_text("")
    tokens_per_step = t.batch_size * spec.model.context
    timed_seconds, timed_steps = 0.0, 0
    every, last_seconds = job.get("checkpoint_every"), None
    for step in range(start, t.steps):
        t0 = time.perf_counter()
        if progress:
            _report_progress(progress, {"node": node_rank, "step": step, "steps": t.steps, "started": time.time(),
                                        "last_step_seconds": last_seconds, "pid": os.getpid()})
        lr = base_optimizer(opt).param_groups[0]["lr"]
        x, y = batch(data.train, t.seed, step, t.batch_size, spec.model.context)
        shard = 0 if job.get("same_shard") else rank  # sabotage: every rank trains on rank 0's slice
        x, y = (v[shard * per_rank_seqs:(shard + 1) * per_rank_seqs] for v in (x, y))
        step_loss = torch.zeros((), device=device)
        for m in range(t.grad_accum):
            xs, ys = (v[m * micro:(m + 1) * micro].to(device) for v in (x, y))
            _, loss = engine(xs, ys)
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach().float() / t.grad_accum
        if world > 1:
            dist.all_reduce(step_loss)  # gloo has no AVG
            step_loss /= world
        loss_value = step_loss.item()
        if step > start:  # the first step of a launch allocates everything: not timed
            timed_seconds += time.perf_counter() - t0
            timed_steps += 1
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": loss_value, "lr": lr,
                                    "tokens": (step + 1) * tokens_per_step}) + "\n")
        if every and (step + 1) % every == 0 and step + 1 < t.steps:
            # every rank writes its own ZeRO partition; save_checkpoint returns after a barrier, so all are written
            tag = f"step{step + 1}"
            engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"next_step": step + 1})
            if rank == 0:
                tmp = ckpt_dir / f".{COMPLETE}"
                tmp.write_text(tag)
                os.replace(tmp, ckpt_dir / COMPLETE)
            if world > 1:
                dist.barrier()  # nobody starts the next step before the checkpoint is marked complete
        last_seconds = time.perf_counter() - t0
    metrics = {
        "engine": "deepspeed", "zero_stage": t.zero_stage, "world_size": world, "backend": dist.get_backend(),
        "device": device.type, "params": model.num_params(), "tokens_per_step": tokens_per_step, "steps": t.steps,
        "start_step": start, "timed_steps": timed_steps,
        "train_tokens_per_s": tokens_per_step * timed_steps / timed_seconds if timed_seconds else float("nan"),
        "data": data.description, "hosts": nodes,
    }
    if world > 1:
        dist.barrier()  # nobody tears the group down while rank 0 still writes
    if rank == 0:
        log = [json.loads(line) for line in log_path.read_text().splitlines()]
        metrics["final_train_loss"] = log[-1]["loss"] if log else None
        write_json(run_dir / "env.json", environment())
        write_json(run_dir / f"metrics{job.get('log_suffix', '')}.json", metrics)  # last: marks the run complete
    shutdown()


def job_from_profile(profile: str, run_dir: Path) -> dict:
    """The job a cluster's pods run: the profile's w21.gpt section, checkpoints every `fault.checkpoint_every`
    steps, resuming when a checkpoint exists (a pod restarted by its Job continues the run when the run directory
    is a persistent volume, cluster.artifacts_pvc; on an emptyDir a new pod finds no checkpoint and starts over)."""
    from impl.core.profiles import load_profile

    spec = load_profile(profile).milestone("w21")
    return {"gpt": spec.gpt.model_dump(), "checkpoint_every": spec.fault.checkpoint_every, "resume": True}


def main() -> None:  # the launchers' entry point; multihost.py writes job.json, a cluster's pod names a profile
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--profile", help="build the job from this profile's w21 section when run-dir has no job.json")
    p.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher passes it
    a = p.parse_args()
    job_file = a.run_dir / "job.json"
    if job_file.exists():
        job = json.loads(job_file.read_text())
    elif a.profile:
        a.run_dir.mkdir(parents=True, exist_ok=True)
        job = job_from_profile(a.profile, a.run_dir)
    else:
        raise SystemExit(f"{job_file} does not exist and no --profile was given")
    train_process(job, a.run_dir)
    leave()


if __name__ == "__main__":
    main()
