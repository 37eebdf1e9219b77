"""What the Kubernetes API server checks on a create beyond an object's OpenAPI schema, modelled offline for
manifests.py: object names by kind, resource quantities, ObjectMeta's fields in a custom resource, and a CRD's
`x-kubernetes-validations` (CEL rules, evaluated with cel-python, whose `matches` uses RE2 as Kubernetes does).

CEL rules as the API server applies them to a create:
  - evaluated with `self` = the value at the rule's schema node, for every such value present (each item of a
    list, each value of a map); at the root, `self.metadata` holds only name and generateName
  - transition rules (those that read `oldSelf`) run only on an update: not applicable to a create
  - rules under `status` are not applicable either: with the status subresource a create drops `status`
  - none are run while the object has type errors (the API server's "some validation rules were not checked")
  - Kubernetes' CEL libraries (isURL, quantity, ip, format.*, the strings and lists extensions ...) are not
    provided: none of the TrainJob CRD's rules calls one, and a rule that did would be reported as not
    evaluable (the object invalid), never skipped silently
  - defaults are not applied first: an absent field's rules do not run (the CRD's one defaulted field with a
    rule, spec.managedBy, defaults to a value its rule allows)
Not modelled: the API server's other semantic checks (requests <= limits, non-negative resources, label keys and
values, pod-spec rules such as a subdomain being a DNS label); its quantity parser also reads " 2" (spaces
trimmed), "+" and "." (as zero), which the grammar below rejects.
"""
from __future__ import annotations

import functools
import json
import re
from decimal import Decimal
from importlib import resources

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
QUANTITY_DEF = "io.k8s.apimachinery.pkg.api.resource.Quantity"

# --- names --------------------------------------------------------------------------------------------------------
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# apimachinery's IsDNS1123Label / IsDNS1123Subdomain / IsDNS1035Label: (pattern, max length, in words)
NAME_FORMATS = {
    "DNS-1123 label": (re.compile(rf"^{_LABEL}$"), 63,
                       "lowercase letters, digits and '-', starting and ending with a letter or digit"),
    "DNS-1123 subdomain": (re.compile(rf"^{_LABEL}(\.{_LABEL})*$"), 253,
                           "DNS-1123 labels joined by '.': lowercase letters, digits, '-' and '.', starting and "
                           "ending with a letter or digit"),
    "DNS-1035 label": (re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"), 63,
                       "lowercase letters, digits and '-', starting with a letter and ending with a letter or "
                       "digit"),
}
# the name rule the API server applies per kind (ValidateObjectMeta's name function); every other kind, custom
# resources included, needs a DNS-1123 subdomain (a CRD may add its own rules: the TrainJob's are CEL rules)
NAME_FORMAT_BY_KIND = {"Service": "DNS-1035 label"}


def _name_problem(field: str, value, fmt: str, whose: str) -> str | None:
    pattern, max_len, words = NAME_FORMATS[fmt]
    if isinstance(value, str) and pattern.match(value) and len(value) <= max_len:
        return None
    return f"{field} {value!r} is not a {fmt} (at most {max_len} characters of {words}), which {whose} must be"


def name_problems(obj: dict) -> list[str]:
    """metadata.name by the object's kind and metadata.namespace (a DNS-1123 label), as the API server checks
    them."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or "name" not in meta:
        return ["metadata.name is missing (the manifests set a name, never generateName)"]
    kind = obj.get("kind")
    found = [_name_problem("metadata.name", meta["name"], NAME_FORMAT_BY_KIND.get(kind, "DNS-1123 subdomain"),
                           f"a {kind}'s name")]
    if "namespace" in meta:
        found.append(_name_problem("metadata.namespace", meta["namespace"], "DNS-1123 label", "a namespace"))
    return [p for p in found if p]


# --- quantities ---------------------------------------------------------------------------------------------------
# what resource.ParseQuantity reads (k8s.io/apimachinery/pkg/api/resource/quantity.go): a signed decimal number,
# then a binary-SI suffix (Ki .. Ei), a decimal-SI one (n u m k M G T P E, or none) or an integer exponent (e3)
QUANTITY = re.compile(r"^[+-]?(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
QUANTITY_WORDS = "a Kubernetes quantity: a number with an optional suffix, such as 500m, 2, 1.5, 4Gi or 1e3"
_SI = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def quantity_value(q) -> Decimal | None:
    """The value of a quantity (a number, or a string in the grammar above); None if it is not one."""
    if isinstance(q, (int, float)) and not isinstance(q, bool):
        return Decimal(str(q))
    m = QUANTITY.match(q) if isinstance(q, str) else None
    if not m:
        return None
    suffix = m["suffix"] or ""
    sign = -1 if q.startswith("-") else 1
    if suffix.endswith("i"):
        scale = Decimal(1024) ** ("KMGTPE".index(suffix[0]) + 1)
    elif suffix[:1] in ("e", "E"):
        try:
            scale = Decimal(10) ** int(suffix[1:])
        except ArithmeticError:  # an exponent beyond Decimal's range (1e9999999): no resource is that large
            return None
    else:
        scale = Decimal(10) ** _SI.get(suffix, 0)
    return sign * Decimal(m["num"]) * scale


def is_quantity(schema: dict, defs: dict | None = None) -> bool:
    """A resource.Quantity field: the core definition, or in a CRD controller-gen's form of one (int-or-string
    with a pattern: it gives intstr.IntOrString no pattern)."""
    return (defs is not None and schema is defs.get(QUANTITY_DEF)) or \
        bool(schema.get("x-kubernetes-int-or-string") and schema.get("pattern"))


def quantity_problems(obj: dict, schema: dict, defs: dict | None = None) -> list[str]:
    return [f"{dotted(path)}: {value!r} is not {QUANTITY_WORDS}"
            for path, value, node in walk(obj, schema, defs)
            if is_quantity(node, defs) and isinstance(value, str) and quantity_value(value) is None]


# --- Kubernetes' own schemas (kubernetes-validate's bundle) ---------------------------------------------------------
@functools.cache
def definitions(kubernetes_version: str) -> dict:
    """The `$defs` of kubernetes-validate's bundled strict schemas for the version its validate() picks for
    `kubernetes_version` (asked of it, so that both read the same bundle); offline, from the installed package."""
    import kubernetes_validate
    from kubernetes_validate import utils

    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}}
    try:
        picked = kubernetes_validate.validate(probe, kubernetes_version, strict=True)
    except (utils.VersionNotSupportedError, IndexError):  # IndexError: older than every bundled version
        bundled = utils.all_versions()
        raise ValueError(f"kubernetes_version {kubernetes_version!r}: kubernetes-validate "
                         f"{kubernetes_validate.__version__} bundles the schemas of Kubernetes {bundled[0]} to "
                         f"{bundled[-1]}") from None
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    for d in root.iterdir():
        if re.fullmatch(rf"v{re.escape(picked)}\.[0-9]+-local-strict", d.name):
            return json.loads((d / "_definitions.json").read_text())["$defs"]
    raise ValueError(f"kubernetes-validate picked Kubernetes {picked} but bundles no strict schemas for it")


def kind_schema(obj: dict, defs: dict) -> dict | None:
    """The definition of a core object's apiVersion and kind (None for a kind the bundle lacks)."""
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    want = {"group": group, "version": version, "kind": obj.get("kind")}
    return next((d for d in defs.values() if want in d.get("x-kubernetes-group-version-kind", [])), None)


def metadata_problems(metadata, defs: dict) -> list[str]:
    """A custom resource's metadata against ObjectMeta (unknown fields rejected, as the API server decodes it
    into ObjectMeta): its CRD schema says only `type: object`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator({"$defs": defs, "$ref": f"#/$defs/{OBJECT_META}"})
    return [f"{dotted(('metadata', *e.absolute_path))}: {e.message}"
            for e in sorted(validator.iter_errors(metadata), key=lambda e: list(map(str, e.absolute_path)))]


# --- walking an object along its schema -----------------------------------------------------------------------------
def dotted(path) -> str:
    return ".".join(map(str, path)) or "<root>"


def walk(value, schema: dict, defs: dict | None = None, path: tuple = ()):
    """(path, value, schema node) for `value` and every value under it that the schema describes ($refs into
    `defs` resolved)."""
    while "$ref" in schema and defs:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    yield path, value, schema
    if isinstance(value, dict):
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from walk(v, sub, defs, (*path, k))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from walk(v, schema["items"], defs, (*path, i))


def _schema_nodes(schema: dict, path: str = ""):
    """(path, node) for every node of a structural (CRD) schema: `spec.items[].name`, `spec.map.*`."""
    yield path, schema
    for k, sub in (schema.get("properties") or {}).items():
        yield from _schema_nodes(sub, f"{path}.{k}" if path else k)
    if isinstance(schema.get("items"), dict):
        yield from _schema_nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _schema_nodes(schema["additionalProperties"], f"{path}.*")


# --- CEL: x-kubernetes-validations ----------------------------------------------------------------------------------
@functools.cache
def _cel():
    import celpy

    return celpy.Environment()


@functools.cache
def _compiled(rule: str):
    return _cel().compile(rule)


@functools.cache
def _program(rule: str):
    return _cel().program(_compiled(rule))


def is_transition_rule(rule: str) -> bool:
    """Does the rule read `oldSelf` (a variable, not a field named so)? The API server runs those on updates."""
    from celpy import CELParseError

    try:
        tree = _compiled(rule)
    except CELParseError:  # not CEL at all: _evaluate reports it
        return False
    return any(t.children and t.children[0] == "oldSelf" for t in tree.find_data("ident"))


def cel_rules(schema: dict, status_subresource: bool) -> list[dict]:
    """Every x-kubernetes-validations rule of a CRD schema: {path, rule, message, on_create, why (when not)}."""
    out = []
    for path, node in _schema_nodes(schema):
        for r in node.get("x-kubernetes-validations") or []:
            why = ("a transition rule (oldSelf): run on updates only" if is_transition_rule(r["rule"]) else
                   "under status, which a create drops (the status subresource)"
                   if status_subresource and path.split(".")[0] == "status" else None)
            out.append({"path": path or "<root>", "rule": r["rule"], "message": r.get("message"), "on_create": not why,
                        **({"why": why} if why else {})})
    return out


def _evaluate(rule: str, value) -> str | None:
    """None when the rule holds for `self` = value, else why not."""
    import celpy
    from celpy.celtypes import BoolType
    from celpy.evaluation import CELEvalError

    try:
        result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except celpy.CELParseError as e:
        return f"is not CEL: {str(e).splitlines()[0]}"
    except CELEvalError as e:
        result = e
    if isinstance(result, CELEvalError):  # celpy returns some errors as values
        detail = str(result.args[0]).split(" (in activation")[0] if result.args else repr(result)
        if detail.startswith("undeclared reference"):
            detail += " (a Kubernetes CEL library function or variable that apiserver.py does not provide)"
        return f"could not be evaluated: {detail}"
    if not isinstance(result, BoolType):
        return f"gave {result!r}, not a bool"
    return None if result else "is false"


def cel_problems(obj: dict, schema: dict, status_subresource: bool) -> list[str]:
    """The rules that fail on this object, as a create would evaluate them (see the module's docstring)."""
    if status_subresource:
        obj = {k: v for k, v in obj.items() if k != "status"}
    problems = []
    for path, value, node in walk(obj, schema):
        for r in node.get("x-kubernetes-validations") or []:
            if is_transition_rule(r["rule"]):
                continue
            if not path and isinstance(value, dict) and isinstance(value.get("metadata"), dict):
                meta = value["metadata"]  # a root rule sees only these two metadata fields
                value = {**value, "metadata": {k: meta[k] for k in ("name", "generateName") if k in meta}}
            failed = _evaluate(r["rule"], value)
            if failed:
                what = r.get("message") if failed == "is false" and r.get("message") else f"rule {failed}"
                problems.append(f"{dotted(path)}: {what} (x-kubernetes-validations rule: {r['rule']})")
    return problems
