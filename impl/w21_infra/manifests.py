"""The cluster side of w21: Kubernetes manifests, a DeepSpeed hostfile and per-node launch commands, rendered
from a profile's `w21.cluster` section, and validated offline.

    python -m impl deploy render --profile multinode --out deploy/k8s/rendered/multinode

writes
    trainjob.yaml      Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1), runtime torch-distributed:
                       the runtime sets PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR, which torchrun reads
    indexed-job.yaml   for clusters without the operator: a headless Service (the rendezvous name) and an Indexed
                       Job, pod i = node rank i, master = pod 0 (<name>-0.<name>)
    hostfile           DeepSpeed's, for SSH clusters (cluster.hostnames, slots = processes per node)
    launch.sh          the per-node commands (`deepspeed --no_ssh --node_rank i`, run on node i) and the pdsh form

Volumes, the same in both manifests (the TrainJob adds them to the runtime's `node` replicated job and container
through `spec.runtimePatches`, the v1alpha1 CRD's way to change the runtime's pod template):
    artifacts      at /artifacts (the run directory: checkpoints, logs): the claim `cluster.artifacts_pvc`, which
                   every node mounts (ReadWriteMany), so a pod the Job or JobSet restarts resumes from the last
                   checkpoint; without one an emptyDir, gone with its pod: a restarted pod starts over
    fixture-cache  at the image's LLM_MILESTONES_CACHE (/home/app/.cache/llm-milestones): the claim
                   `cluster.data_pvc`: the fixture cache (data, tokenizers, token caches), filled beforehand where
                   they can be fetched (`python -m impl fetch`, the profile's hub data); the pods run with
                   HF_HUB_OFFLINE=1 and fetch nothing. Without a claim nothing is mounted: the pods find no data.

Validation (no cluster, no network): core objects against kubernetes-validate's bundled schemas at
`cluster.kubernetes_version` (strict: unknown fields are errors), the TrainJob against the openAPIV3Schema of
Kubeflow Trainer's CRD kept in deploy/k8s/crds/ (its SOURCE.md and LICENSE beside it), unknown fields closed
off the way the API server's strict field validation rejects them, its metadata against ObjectMeta and its
x-kubernetes-validations (CEL) rules evaluated; then what the API server adds to a schema (apiserver.py): names
by kind (a Service's a DNS-1035 label, others DNS-1123 subdomains) and resource quantities by their grammar.
"""
from __future__ import annotations

import copy
import functools
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from impl.core.errors import MilestonesError
from impl.w21_infra import apiserver
from impl.w21_infra.spec import W21Spec

CRD = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "crds" / "trainer.kubeflow.org_trainjobs.yaml"
WORKER = "impl.w21_infra.worker"
RUN_DIR = "/artifacts"  # the run directory's volume in the pods (shared only with cluster.artifacts_pvc)
CACHE = "/home/app/.cache/llm-milestones"  # LLM_MILESTONES_CACHE in deploy/docker/Dockerfile.{cpu,cuda}
# the torch-distributed ClusterTrainingRuntime's replicated job and its container are both named "node"
RUNTIME_JOB = RUNTIME_CONTAINER = "node"
APP_GID = 1000  # the images' user `app` (uid and gid 1000): fsGroup, so that it can write the mounted claims


class ManifestError(MilestonesError):
    pass


@dataclass
class Rendered:
    dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    objects: list[dict] = field(default_factory=list)  # every Kubernetes object, in file order


def _run_dir(spec: W21Spec) -> str:
    return f"{RUN_DIR}/{spec.cluster.name}"


def _worker_args(spec: W21Spec) -> list[str]:
    return ["-m", WORKER, "--run-dir", _run_dir(spec), "--profile", spec.cluster.profile]


def _cpu_threads(spec: W21Spec) -> int:
    """Threads per process on a CPU node: its whole CPUs shared by its processes, at least 1. A cpu_per_node
    that is no quantity, or a nproc_per_node below 1, still renders: validation names them (cpu's grammar, the
    CRD's numProcPerNode rule) instead of a crash here."""
    c = spec.cluster
    cpus = apiserver.quantity_value(c.cpu_per_node)
    return max(1, int(cpus or 0) // max(1, c.nproc_per_node))


def _env(spec: W21Spec) -> list[dict]:
    c = spec.cluster
    # nothing fetched at run time: data and tokenizers come from the fixture cache volume (cluster.data_pvc)
    env = [{"name": "HF_HUB_OFFLINE", "value": "1"},
           {"name": "OMP_NUM_THREADS", "value": "1" if c.gpus_per_node else str(_cpu_threads(spec))}]
    if c.gpus_per_node == 0:
        env.append({"name": "CUDA_VISIBLE_DEVICES", "value": ""})
    return env


def _resources(spec: W21Spec) -> dict:
    c = spec.cluster
    r = {"cpu": c.cpu_per_node, "memory": c.memory_per_node}
    if c.gpus_per_node:
        r["nvidia.com/gpu"] = str(c.gpus_per_node)
    return {"requests": dict(r), "limits": dict(r)}


def _volumes(spec: W21Spec) -> tuple[list[dict], list[dict]]:
    """(volumes, the trainer container's volumeMounts), the same in both manifests: the run directory from
    cluster.artifacts_pvc (an emptyDir without one: a restarted pod finds no checkpoint and starts over), the
    fixture cache from cluster.data_pvc (nothing without one)."""
    c = spec.cluster
    volumes = [{"name": "artifacts", **({"persistentVolumeClaim": {"claimName": c.artifacts_pvc}}
                                        if c.artifacts_pvc else {"emptyDir": {}})}]
    mounts = [{"name": "artifacts", "mountPath": RUN_DIR}]
    if c.data_pvc:
        volumes.append({"name": "fixture-cache", "persistentVolumeClaim": {"claimName": c.data_pvc}})
        mounts.append({"name": "fixture-cache", "mountPath": CACHE})
    return volumes, mounts


def trainjob(spec: W21Spec) -> dict:
    c = spec.cluster
    volumes, mounts = _volumes(spec)
    # v1alpha1 has no volumes under `trainer`: they patch the runtime's pod template (replicated job and container
    # "node" of torch-distributed) through runtimePatches, owned by the `manager` named here
    patch = {"manager": "llm-milestones", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
        "name": RUNTIME_JOB, "template": {"spec": {"template": {"spec": {
            "securityContext": {"fsGroup": APP_GID}, "volumes": volumes,
            "containers": [{"name": RUNTIME_CONTAINER, "volumeMounts": mounts}]}}}}}]}}}}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": c.name, "namespace": c.namespace, "labels": {"app.kubernetes.io/part-of": "llm-milestones"}},
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": c.runtime},
            "trainer": {
                "image": c.image,
                # torchrun takes --nnodes, --node-rank, --master-addr/port from the runtime's PET_* variables
                "command": ["python", "-m", "torch.distributed.run", *_worker_args(spec)],
                "numNodes": c.nodes, "numProcPerNode": c.nproc_per_node,
                "resourcesPerNode": _resources(spec), "env": _env(spec),
            },
            "runtimePatches": [patch],
        },
    }


def indexed_job(spec: W21Spec) -> list[dict]:
    c = spec.cluster
    labels = {"app.kubernetes.io/name": c.name, "app.kubernetes.io/part-of": "llm-milestones"}
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": c.name, "namespace": c.namespace, "labels": labels},
        "spec": {"clusterIP": "None", "selector": labels, "publishNotReadyAddresses": True,
                 "ports": [{"name": "rendezvous", "port": c.master_port, "targetPort": c.master_port}]},
    }
    command = ["python", "-m", "torch.distributed.run", "--nnodes", str(c.nodes), "--nproc-per-node",
               str(c.nproc_per_node), "--node-rank", "$(NODE_RANK)", "--master-addr", f"{c.name}-0.{c.name}",
               "--master-port", str(c.master_port), *_worker_args(spec)]
    volumes, mounts = _volumes(spec)
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": c.name, "namespace": c.namespace, "labels": labels},
        "spec": {
            "completionMode": "Indexed", "completions": c.nodes, "parallelism": c.nodes,
            # a lost node fails its pod and the Job recreates it: with cluster.artifacts_pvc the worker resumes
            # from the last checkpoint on that claim; with the emptyDir (no claim) the new pod starts over
            "backoffLimit": 3,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "subdomain": c.name, "restartPolicy": "Never",
                    "securityContext": {"fsGroup": APP_GID},  # the image's user writes the mounted claims
                    "containers": [{
                        "name": "trainer", "image": c.image, "command": command,
                        "env": [{"name": "NODE_RANK", "valueFrom": {"fieldRef": {
                            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                            *_env(spec)],
                        "ports": [{"name": "rendezvous", "containerPort": c.master_port}],
                        "resources": _resources(spec),
                        "volumeMounts": [*mounts, {"name": "dshm", "mountPath": "/dev/shm"}],
                    }],
                    # dshm: NCCL's shared memory
                    "volumes": [*volumes, {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
                },
            },
        },
    }
    return [service, job]


def hostfile(spec: W21Spec) -> str:
    return "".join(f"{h} slots={spec.cluster.nproc_per_node}\n" for h in spec.cluster.hostnames)


def launch_commands(spec: W21Spec) -> dict:
    """The SSH-cluster forms: one `deepspeed --no_ssh --node_rank i` command per node (each node launches its own
    rank: no ssh between nodes), and the pdsh form run once on node 0 (passwordless ssh to every host)."""
    c = spec.cluster
    common = ["--hostfile", "hostfile", "--master_addr", c.hostnames[0], "--master_port", str(c.master_port)]
    tail = ["--module", WORKER, "--run-dir", _run_dir(spec), "--profile", c.profile]
    per_node = {h: ["deepspeed", *common, "--no_ssh", "--node_rank", str(i), "--num_nodes", str(c.nodes), *tail]
                for i, h in enumerate(c.hostnames)}
    pdsh = ["deepspeed", *common, "--launcher", "pdsh", "--num_nodes", str(c.nodes), *tail]
    return {"per_node": per_node, "pdsh": pdsh}


def _launch_sh(spec: W21Spec) -> str:
    cmds = launch_commands(spec)
    lines = ["#!/bin/sh", f"# w21 on an SSH cluster: {spec.cluster.nodes} nodes, {spec.cluster.nproc_per_node} "
             f"process(es) each; {RUN_DIR} must be a directory all nodes share (checkpoints).",
             "# Rendered by `python -m impl deploy render`; run ONE of the forms below.", "",
             "# 1. No ssh between nodes: on each node, its own command (the image: deploy/docker/Dockerfile.*)"]
    for host, cmd in cmds["per_node"].items():
        lines.append(f"# on {host}:\n#   {shlex.join(cmd)}")
    lines += ["", "# 2. pdsh: once, on the first host, with passwordless ssh to every host in the hostfile",
              shlex.join(cmds["pdsh"]), ""]
    return "\n".join(lines)


def render(spec: W21Spec, out: Path) -> Rendered:
    """Write every file into `out` (replaced whole: a failure leaves the previous render, never half of one)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".render-", dir=out.parent))
    try:
        tj, ij = trainjob(spec), indexed_job(spec)
        (tmp / "trainjob.yaml").write_text(yaml.safe_dump(tj, sort_keys=False))
        (tmp / "indexed-job.yaml").write_text(yaml.safe_dump_all(ij, sort_keys=False))
        (tmp / "hostfile").write_text(hostfile(spec))
        (tmp / "launch.sh").write_text(_launch_sh(spec))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {n: out / n for n in ("trainjob.yaml", "indexed-job.yaml", "hostfile", "launch.sh")}
    return Rendered(out, files, load_objects(out))


def load_objects(out: Path) -> list[dict]:
    objects = []
    for name in ("trainjob.yaml", "indexed-job.yaml"):
        objects += [d for d in yaml.safe_load_all((Path(out) / name).read_text()) if d]
    return objects


def _closed(schema):
    """The CRD schema with unknown fields rejected where the API server's strict field validation rejects them:
    objects that list properties and neither allow more nor preserve unknown fields."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@functools.cache
def crd_version(version: str = "v1alpha1") -> dict:
    """The CRD's entry for `version` (its schema and subresources), parsed once: the file is 450 kB of YAML."""
    if not CRD.exists():
        raise ManifestError(f"the TrainJob CRD {CRD} is missing (see deploy/k8s/crds/SOURCE.md)")
    crd = yaml.safe_load(CRD.read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v
    raise ManifestError(f"{CRD} has no version {version}")


def crd_schema(version: str = "v1alpha1") -> dict:
    return _closed(copy.deepcopy(crd_version(version)["schema"]["openAPIV3Schema"]))


@functools.cache
def _crd_validator():
    """The closed schema's validator, made once (its .schema serves the checks that walk the schema)."""
    import jsonschema

    return jsonschema.Draft7Validator(crd_schema())


def _status_subresource() -> bool:
    return "status" in (crd_version().get("subresources") or {})


def crd_rules() -> list[dict]:
    """The TrainJob CRD's x-kubernetes-validations rules, each with whether a create evaluates it (and why not)."""
    return apiserver.cel_rules(_crd_validator().schema, _status_subresource())


def _trainjob_problems(obj: dict, defs: dict) -> list[str]:
    validator = _crd_validator()
    errors = [e for e in validator.iter_errors(obj)
              # the CRD's quantity pattern: apiserver's quantity grammar reports those values, more clearly
              if not (e.validator == "pattern" and apiserver.is_quantity(e.schema))]
    problems = [f"{apiserver.dotted(e.absolute_path)}: {e.message}"
                for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))]
    problems += apiserver.metadata_problems(obj.get("metadata"), defs)
    problems += apiserver.quantity_problems(obj, validator.schema)
    if any(e.validator == "type" for e in errors):  # the API server runs no CEL rule on a mistyped object
        problems.append("<root>: the x-kubernetes-validations rules were not checked because the object has type "
                        "errors; correct them to complete validation")
    else:
        problems += apiserver.cel_problems(obj, validator.schema, _status_subresource())
    return problems


def validate_object(obj: dict, kubernetes_version: str) -> list[str]:
    """The problems of one object (empty: valid)."""
    import kubernetes_validate

    problems = apiserver.name_problems(obj)
    try:
        defs = apiserver.definitions(kubernetes_version)
    except ValueError as e:
        return [*problems, str(e)]
    if obj.get("apiVersion") == "trainer.kubeflow.org/v1alpha1" and obj.get("kind") == "TrainJob":
        return problems + _trainjob_problems(obj, defs)
    try:
        kubernetes_validate.validate(obj, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        problems.append(f"{apiserver.dotted(e.path)}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        return [*problems, e.message]
    return problems + apiserver.quantity_problems(obj, apiserver.kind_schema(obj, defs) or {}, defs)


def validate(spec: W21Spec, rendered: Rendered) -> dict:
    """{checked: ["Kind/name", ...], invalid: {"Kind/name": [problems]}, kubernetes_version, crd}."""
    version = spec.cluster.kubernetes_version
    checked, invalid = [], {}
    for obj in rendered.objects:
        key = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        checked.append(key)
        problems = validate_object(obj, version)
        if problems:
            invalid[key] = problems
    rules = crd_rules()
    on_create = sum(r["on_create"] for r in rules)
    return {"checked": checked, "invalid": invalid, "kubernetes_version": version,
            "crd": f"{CRD.relative_to(CRD.parents[3])} (v1alpha1 openAPIV3Schema, unknown fields rejected; "
                   f"{on_create} of its {len(rules)} CEL rules evaluated, the others apply to updates or status)"}
