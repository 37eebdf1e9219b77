"""What a hardware profile says about w21; validated when the profile is loaded.

    w21:
      gpt:                      # a w05 section: the w01 GPT through DeepSpeed ZeRO-2 (impl/w05_deepspeed)
        data: {source: offline, corpus: [austen, brown], val_fraction: 0.1}
        tokenizer: {kind: bpe, vocab_size: 4096}
        model: {n_layer: 2, n_head: 4, n_embd: 64, context: 64, dropout: 0.0}
        train: {steps: 12, batch_size: 16, lr: 3.0e-3, zero_stage: 2, log_every: 1}
        eval: {stride: 64, max_tokens: 4096}
      hosts: {count: 2, nproc_per_host: 1, launcher: torchrun}   # network namespaces here, nodes on a cluster
      fault: {checkpoint_every: 4, seed: 0, detect_timeout_s: 60}
      cluster: {image: llm-milestones:cpu, kubernetes_version: "1.30", gpus_per_node: 0, data_pvc: w21-data}
      targets: {two_host_max_loss_diff: ..., resume_final_loss_diff: ..., fault_detect_seconds: ...,
                manifests_invalid: ...}
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from impl.core.targets import Target
from impl.w05_deepspeed.spec import W05Spec


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GPTSpec(W05Spec):
    """w05's section as it is (model, data, DeepSpeed config, global batch); its targets are w21's own."""
    targets: dict[str, Target] = {}


class HostsSpec(Strict):
    """The hosts of the multi-node run: network namespaces joined by a veth pair here, nodes on a cluster."""
    count: Literal[2] = 2  # two namespaces on one machine; a cluster's node count is cluster.nodes
    nproc_per_host: int = 1  # processes each host's launcher starts
    launcher: Literal["torchrun", "deepspeed"] = "torchrun"  # deepspeed: `deepspeed --no_ssh --node_rank i`
    subnet: str = "10.77.0"  # host i gets <subnet>.<i+1>/24 inside its own namespace
    master_port: int = 29500
    timeout_s: float = 900  # a whole two-host run; a hung one is killed and reported


class FaultSpec(Strict):
    """Host 1 is killed during a training step drawn with `seed` (the step, and how far into it: see
    multihost.kill_point), a checkpoint being saved every `checkpoint_every` steps. Host 0's launcher must exit with
    the error: the time it takes is measured against the target fault_detect_seconds, waiting at most
    `detect_timeout_s` (well above the target, so a slow detection is a measured fail; never noticed: inf). The job
    resumed from the last complete checkpoint must end where the uninterrupted run ends."""
    checkpoint_every: int = 4
    seed: int = 0
    detect_timeout_s: float = 60


class ClusterSpec(Strict):
    """What the rendered manifests run on a real cluster (python -m impl deploy render)."""
    name: str = "w21-gpt"
    namespace: str = "default"
    image: str = "llm-milestones:cpu"
    nodes: int = 2
    nproc_per_node: int = 1
    gpus_per_node: int = 0  # > 0: nvidia.com/gpu requests and NCCL
    cpu_per_node: str = "2"
    memory_per_node: str = "4Gi"
    kubernetes_version: str = "1.30"  # the bundled schema version kubernetes-validate checks against
    runtime: str = "torch-distributed"  # the Kubeflow ClusterTrainingRuntime the TrainJob refers to (torchrun)
    master_port: int = 29500
    # a ReadWriteMany claim mounted at the run directory (checkpoints shared by the nodes: a restarted pod resumes
    # from them); None: an emptyDir, gone with the pod, so a restarted pod starts over
    artifacts_pvc: str | None = None
    # a claim holding the fixture cache (`python -m impl fetch`'s data and tokenizers, token caches), mounted at
    # the image's LLM_MILESTONES_CACHE; None: nothing mounted, and the pods find no data (HF_HUB_OFFLINE=1)
    data_pvc: str | None = None
    hostnames: list[str] = ["node0", "node1"]  # the SSH hosts of the DeepSpeed hostfile
    profile: str = "cpu"  # the profile the pods train (its w21.gpt section)


class W21Spec(Strict):
    gpt: GPTSpec
    hosts: HostsSpec = HostsSpec()
    fault: FaultSpec = FaultSpec()
    cluster: ClusterSpec = ClusterSpec()
    # ---- w21-container's section (the image and container parity; impl/w21_infra/container.py, images.py) ----
    container: dict[str, Any] | None = None  # impl/w21_infra/container.py:ContainerSpec, checked when loaded

    @model_validator(mode="after")
    def _container_section(self):
        if self.container is not None:
            from impl.w21_infra.container import container_spec  # raises MilestonesError naming the bad key

            try:
                container_spec(self.container)
            except Exception as e:
                raise ValueError(str(e)) from None
        return self
    # ---- end of w21-container's section ----
    targets: dict[Literal["two_host_max_loss_diff", "resume_final_loss_diff", "fault_detect_seconds",
                          "manifests_invalid", "container_loss_diff"], Target]

    @model_validator(mode="after")
    def _fits(self):
        problems = []
        t, h, f = self.gpt.train, self.hosts, self.fault
        world = h.count * h.nproc_per_host
        if t.batch_size % (world * t.grad_accum):
            problems.append(f"gpt.train.batch_size={t.batch_size} must be a multiple of hosts x nproc_per_host x "
                            f"grad_accum = {h.count} x {h.nproc_per_host} x {t.grad_accum}")
        if t.zero_stage != 2:
            problems.append(f"gpt.train.zero_stage={t.zero_stage}: w21's run is ZeRO-2")
        if not 0 < f.checkpoint_every <= t.steps - 2:
            problems.append(f"fault: need 0 < checkpoint_every ({f.checkpoint_every}) <= gpt.train.steps - 2 "
                            f"({t.steps - 2}): host 1 dies in a step from checkpoint_every to steps - 2, so a "
                            "checkpoint exists when it dies and a step remains after it")
        detect = self.targets.get("fault_detect_seconds")
        if detect and f.detect_timeout_s < 2 * detect.threshold:
            problems.append(f"fault.detect_timeout_s ({f.detect_timeout_s:g}) must be at least twice the "
                            f"fault_detect_seconds target ({detect.threshold:g}): a slow detection is then measured "
                            "and fails, rather than being cut off")
        if len(self.cluster.hostnames) != self.cluster.nodes:
            problems.append(f"cluster.hostnames has {len(self.cluster.hostnames)} names for {self.cluster.nodes} nodes")
        if problems:
            raise ValueError("; ".join(problems))
        return self
