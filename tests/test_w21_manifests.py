"""w21's manifest validation beyond the schemas' structure, as the API server checks a create, offline: the TrainJob
CRD's x-kubernetes-validations (CEL) rules, object names by kind, resource quantities by Kubernetes' grammar and
ObjectMeta's fields. The twins: each broken manifest below must be reported invalid, by a message naming the field
and the rule, while every manifest rendered from every profile in hardware_profiles/ stays valid."""
from __future__ import annotations

import copy
import socket
from decimal import Decimal

import pytest

from impl.core.profiles import PROFILES_DIR, load_profile, override
from impl.w21_infra import apiserver, manifests

CPU = load_profile("cpu").milestone("w21")
RFC1035_RULE = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
MANAGED_BY_RULE = "self in ['trainer.kubeflow.org/trainjob-controller', 'kueue.x-k8s.io/multikueue']"
URI_RULE = "self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')"


def _render(tmp_path, spec=CPU):
    rendered = manifests.render(spec, tmp_path / "rendered")
    return rendered, manifests.validate(spec, rendered)


def _invalid(objects, version="1.30") -> dict[str, list[str]]:
    """{kind: problems} of the objects that fail."""
    found = {o["kind"]: manifests.validate_object(o, version) for o in objects}
    return {k: v for k, v in found.items() if v}


def test_every_profiles_manifests_render_and_validate(tmp_path):
    rendered_from = []
    for path in sorted(PROFILES_DIR.glob("*.yaml")):
        profile = load_profile(path)
        if "w21" not in profile.milestones():
            continue
        rendered, report = _render(tmp_path / profile.name, profile.milestone("w21"))
        assert report["checked"] and not report["invalid"], (profile.name, report["invalid"])
        rendered_from.append(profile.name)
    assert {"cpu", "multinode"} <= set(rendered_from)


# --- the twins: profile values and object edits that must be reported invalid -------------------------------------
@pytest.mark.parametrize("cluster, expected", [
    # a leading digit: no RFC-1035 label, which the TrainJob's CEL rule and a Service's name require; a Job's name
    # only needs a DNS-1123 subdomain, which "21gpt" is (the API server accepts that Job)
    ({"name": "21gpt"}, {"TrainJob": ["metadata.name must match RFC 1035", RFC1035_RULE],
                         "Service": ["metadata.name '21gpt' is not a DNS-1035 label", "a Service's name"]}),
    ({"cpu_per_node": "two"}, {"TrainJob": ["spec.trainer.resourcesPerNode.limits.cpu: 'two' is not a Kubernetes "
                                            "quantity", "spec.trainer.resourcesPerNode.requests.cpu: 'two'"],
                               "Job": ["spec.template.spec.containers.0.resources.limits.cpu: 'two' is not a "
                                       "Kubernetes quantity"]}),
    ({"nproc_per_node": 0}, {"TrainJob": ["spec.trainer.numProcPerNode: numProcPerNode must be greater than or equal "
                                          "to 1", "rule: self >= 1"]}),
], ids=["name-21gpt", "cpu-two", "nproc-0"])
def test_a_profile_value_the_api_server_rejects_fails_validation_naming_field_and_rule(tmp_path, cluster, expected):
    spec = override(CPU, cluster=cluster)
    rendered, report = _render(tmp_path, spec)  # renders (no crash on a bad value): validation names it
    invalid = _invalid(rendered.objects)
    assert set(invalid) == set(expected), invalid
    for kind, words in expected.items():
        for w in words:
            assert any(w in p for p in invalid[kind]), (kind, w, invalid[kind])
    assert len(report["invalid"]) == len(expected)
    assert not CPU.targets["manifests_invalid"].passes(len(report["invalid"]))


def _set(path, value):
    def edit(obj):
        *parents, last = path
        for k in parents:
            obj = obj[k] if isinstance(obj, list) else obj.setdefault(k, {})
        obj[last] = value
    return edit


@pytest.mark.parametrize("kinds, edit, words", [
    ({"TrainJob"}, _set(["spec", "managedBy"], "me"),
     ["spec.managedBy: ManagedBy must be trainer.kubeflow.org/trainjob-controller", MANAGED_BY_RULE]),
    # the CRD says only `metadata: {type: object}`: ObjectMeta's schema rejects the misspelt field
    ({"TrainJob", "Service", "Job"}, _set(["metadata", "lables"], {"app": "x"}),
     ["metadata: Additional properties are not allowed ('lables' was unexpected)"]),
    ({"TrainJob"}, _set(["metadata", "name"], "w" * 64),
     ["metadata.name must be no more than 63 characters", "size(self.metadata.name) <= 63"]),
    ({"TrainJob"}, _set(["spec", "initializer"], {"dataset": {"storageUri": "datasets/openwebtext"}}),
     ["spec.initializer.dataset.storageUri: storageUri may be empty, or it must be a valid URI", URI_RULE]),
    ({"TrainJob"}, _set(["spec", "initializer"], {"model": {"storageUri": "gpt2"}}),
     ["spec.initializer.model.storageUri: storageUri may be empty", URI_RULE]),
    ({"Job"}, _set(["spec", "template", "spec", "containers", 0, "resources", "requests", "memory"], "4 GB"),
     ["spec.template.spec.containers.0.resources.requests.memory: '4 GB' is not a Kubernetes quantity"]),
    ({"Service", "Job"}, _set(["metadata", "namespace"], "Team_A"),
     ["metadata.namespace 'Team_A' is not a DNS-1123 label"]),
], ids=["managedBy-me", "metadata-lables", "name-64", "dataset-uri", "model-uri", "memory-4-GB", "namespace"])
def test_an_edited_manifest_the_api_server_rejects_fails_validation_naming_field_and_rule(tmp_path, kinds, edit,
                                                                                         words):
    rendered, _ = _render(tmp_path)
    objects = copy.deepcopy(rendered.objects)
    for obj in objects:
        if obj["kind"] in kinds:
            edit(obj)
    invalid = _invalid(objects)
    assert set(invalid) == kinds, invalid
    for kind in kinds:
        for w in words:
            assert any(w in p for p in invalid[kind]), (kind, w, invalid[kind])


def test_what_the_crd_rules_allow_validates(tmp_path):
    rendered, _ = _render(tmp_path)
    trainjob = copy.deepcopy(rendered.objects[0])
    trainjob["spec"]["managedBy"] = "kueue.x-k8s.io/multikueue"
    trainjob["spec"]["initializer"] = {"dataset": {"storageUri": ""}, "model": {"storageUri": "hf://openai/gpt2"}}
    trainjob["metadata"]["name"] = "w" * 63
    trainjob["spec"]["trainer"]["resourcesPerNode"]["limits"].update(cpu="500m", memory="1.5Gi")
    assert manifests.validate_object(trainjob, "1.30") == []


def test_a_cpu_quantity_with_a_suffix_renders_its_thread_count(tmp_path):
    for cpu, threads in (("500m", "1"), ("4", "4"), ("2e0", "2")):
        rendered, report = _render(tmp_path / cpu, override(CPU, cluster={"cpu_per_node": cpu}))
        assert not report["invalid"], report["invalid"]
        env = {e["name"]: e["value"] for e in rendered.objects[0]["spec"]["trainer"]["env"]}
        assert env["OMP_NUM_THREADS"] == threads


# --- the pieces ----------------------------------------------------------------------------------------------------
def test_the_crds_rules_evaluated_on_a_create_and_those_that_do_not_apply():
    rules = manifests.crd_rules()
    on_create = sorted((r["path"], r["rule"]) for r in rules if r["on_create"])
    assert on_create == sorted([
        ("<root>", RFC1035_RULE), ("<root>", "size(self.metadata.name) <= 63"),
        ("spec.initializer.dataset.storageUri", URI_RULE), ("spec.initializer.model.storageUri", URI_RULE),
        ("spec.managedBy", MANAGED_BY_RULE), ("spec.trainer.numProcPerNode", "self >= 1")])
    skipped = [r for r in rules if not r["on_create"]]
    assert {r["rule"] for r in skipped if "oldSelf" in r["why"]} == {"self == oldSelf"}  # 13 immutable fields
    assert sum("oldSelf" in r["why"] for r in skipped) == 13
    assert [(r["path"], r["rule"]) for r in skipped if "status" in r["why"]] == [
        ("status.trainerStatus", "has(self.lastUpdatedTime)")]


def test_cel_rules_the_api_server_would_not_run_on_a_create_are_skipped_and_an_unknown_function_is_reported():
    schema = {"type": "object", "properties": {
        "x": {"type": "integer", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]},
        "u": {"type": "string", "x-kubernetes-validations": [{"rule": "isURL(self)"}]},
        "status": {"type": "object", "x-kubernetes-validations": [{"rule": "has(self.t)", "message": "t missing"}]}}}
    obj = {"x": 1, "u": "https://example.com", "status": {}}
    problems = apiserver.cel_problems(obj, schema, status_subresource=True)
    # a Kubernetes CEL library function this validator does not provide: the object fails, loudly
    assert problems == ["u: rule could not be evaluated: undeclared reference to 'isURL' (a Kubernetes CEL library "
                        "function or variable that apiserver.py does not provide) (x-kubernetes-validations rule: "
                        "isURL(self))"]
    broken = {"x-kubernetes-validations": [{"rule": "self >=", "message": "never shown"}]}
    assert apiserver.cel_problems(1, broken, status_subresource=False)[0].startswith("<root>: rule is not CEL: ")
    assert any("status: t missing" in p for p in apiserver.cel_problems(obj, schema, status_subresource=False))
    assert apiserver.is_transition_rule("self == oldSelf") and not apiserver.is_transition_rule("self.oldSelf == 1")


def test_a_type_error_stops_the_cel_rules_as_the_api_server_does(tmp_path):
    rendered, _ = _render(tmp_path)
    trainjob = copy.deepcopy(rendered.objects[0])
    trainjob["spec"]["trainer"]["numProcPerNode"] = "two"
    trainjob["spec"]["managedBy"] = "me"  # its rule is not run while the object has a type error
    problems = manifests.validate_object(trainjob, "1.30")
    assert problems == ["spec.trainer.numProcPerNode: 'two' is not of type 'integer'",
                        "<root>: the x-kubernetes-validations rules were not checked because the object has type "
                        "errors; correct them to complete validation"]


@pytest.mark.parametrize("q, value", [
    ("2", 2), ("500m", Decimal("0.5")), ("1.5", Decimal("1.5")), ("4Gi", 4 * 2 ** 30), ("1e3", 1000),
    (".5", Decimal("0.5")), ("2.", 2), ("+1k", 1000), ("-1", -1), ("1E-3", Decimal("0.001")), ("100n", Decimal("1e-7")),
    ("7u", Decimal("7e-6")), ("120Gi", 120 * 2 ** 30), (2, 2), (0.25, Decimal("0.25")),
])
def test_quantities_kubernetes_reads(q, value):
    assert apiserver.quantity_value(q) == value
    if isinstance(q, str):  # the CRD's own pattern (controller-gen's for resource.Quantity) allows them too
        assert _crd_quantity_pattern().match(q)


@pytest.mark.parametrize("q", ["two", "1.5GB", "4 Gi", "", "1e1.5", "Gi", "1.2.3", "2K", "1ki", "--1", "1e99999999",
                               True, None])
def test_values_that_are_no_quantity(q):
    assert apiserver.quantity_value(q) is None


def test_a_fractional_exponent_passes_the_crds_pattern_but_not_the_parser():
    # resource.ParseQuantity reads only integer exponents; the TrainJob's values reach a pod's resources, parsed so
    assert _crd_quantity_pattern().match("1e1.5") and apiserver.quantity_value("1e1.5") is None


def _crd_quantity_pattern():
    import re

    schema = manifests.crd_schema()["properties"]["spec"]["properties"]["trainer"]["properties"]["resourcesPerNode"]
    return re.compile(schema["properties"]["limits"]["additionalProperties"]["pattern"])


@pytest.mark.parametrize("kind, name, fmt", [
    ("Service", "21gpt", "DNS-1035 label"), ("Service", "w21.gpt", "DNS-1035 label"),
    ("Job", "W21_GPT", "DNS-1123 subdomain"), ("TrainJob", "w21-gpt-", "DNS-1123 subdomain"),
    ("Job", "x" * 254, "DNS-1123 subdomain"), ("Service", "x" * 64, "DNS-1035 label"),
])
def test_names_the_api_server_rejects_for_the_kind(kind, name, fmt):
    assert apiserver.name_problems({"kind": kind, "metadata": {"name": name}}) == [
        f"metadata.name {name!r} is not a {fmt} (at most {apiserver.NAME_FORMATS[fmt][1]} characters of "
        f"{apiserver.NAME_FORMATS[fmt][2]}), which a {kind}'s name must be"]


@pytest.mark.parametrize("kind, name", [("Job", "21gpt"), ("Job", "w21.gpt"), ("Service", "w21-gpt"),
                                        ("TrainJob", "w" * 63), ("Job", "x" * 253)])
def test_names_the_api_server_accepts_for_the_kind(kind, name):
    assert apiserver.name_problems({"kind": kind, "metadata": {"name": name, "namespace": "team-a"}}) == []


def test_an_unsupported_kubernetes_version_is_one_clear_problem(tmp_path):
    rendered, _ = _render(tmp_path)
    for version in ("1.20", "1.99"):
        problems = manifests.validate_object(rendered.objects[1], version)
        assert len(problems) == 1 and f"kubernetes_version '{version}'" in problems[0], problems
        assert "bundles the schemas of Kubernetes" in problems[0]


def test_validation_reaches_no_network(tmp_path, monkeypatch):
    """Everything it reads is on disk: the CRD in deploy/k8s/crds, kubernetes-validate's bundled schemas."""
    rendered, _ = _render(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError(f"validation tried the network: {args}")

    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for cached in (apiserver.definitions, manifests.crd_version, manifests._crd_validator):
        cached.cache_clear()  # read again, here, with the network refused
    assert manifests.validate(CPU, rendered)["invalid"] == {}
