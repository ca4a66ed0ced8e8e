#!/usr/bin/env python3
"""Offline checks of deploy/: the Compose file against the Compose specification's schema
(deploy/schemas/compose-spec.json, from docker-compose 1.29.2), and every Kubernetes manifest
under deploy/k8s against the Kubernetes API's schemas (the kubernetes-validate package, strict:
unknown fields are errors), with each kustomization's resources present.

    python3 deploy/validate.py [KUBERNETES_VERSION]     # default 1.30

Needs jsonschema, PyYAML and kubernetes-validate (bin/test installs them in a venv). Custom
resources (CloudNativePG's Cluster) have no schema there: their apiVersion, kind and name are
checked, and the operator validates the rest when they are applied. And least privilege, in the
base and in each overlay as kustomize renders it: each workload reads its own Secret and no
other, as files, and no credential is in a ConfigMap or a literal env value, where every pod
could read it; and the connection budget: at maxReplicas, the pools fit the primary's
max_connections.
"""
import re
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
CUSTOM = {("postgresql.cnpg.io/v1", "Cluster")}


def compose_problems():
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    document = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    return [f"docker-compose.yml: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def kubernetes_problems(version):
    problems = []
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        name = path.relative_to(DEPLOY)
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            kind = (document.get("apiVersion"), document.get("kind"))
            if kind == ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
                for resource in document.get("resources", []):
                    if not (path.parent / resource).exists():
                        problems.append(f"{name}: resource {resource} does not exist")
                continue
            if kind in CUSTOM:
                if not document.get("metadata", {}).get("name"):
                    problems.append(f"{name}: {kind[1]} without a name")
                continue
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{name}: {kind[1]} {document['metadata'].get('name')}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name}: no schema for {kind}: {e}")
    return problems


# Each workload of deploy/k8s/base and the one Secret it may read: the API node never sees the
# owner's or the worker's credentials, nor the worker the owner's.
SECRETS = {
    "botfleet-worker": "botfleet-worker",
    "botfleet-api": "botfleet-api",
    "botfleet-migrate": "botfleet-migrate",
    "botfleet-redis-acl": "botfleet-redis-acl",
    "botfleet-webhook-set": "botfleet-webhook",
}


# Settings that hold credentials: never in a ConfigMap or a literal env value.
CREDENTIAL = re.compile(r"^BOTFLEET_(DATABASE_URL|REPLICA_URLS|(CACHE_)?REDIS_URL|.*_PASSWORD|.*_TOKEN"
                        r"|.*_WEBHOOK_SECRET|SENTRY_DSN)$")


def secrets_read(pod):
    """The Secrets a pod spec reads, as files (volumes) and in its environment."""
    files = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    env = set()
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        env |= {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
        env |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
    return files, env


def render(directory):
    """The documents of a kustomization, rendered for what these checks read: resources,
    namespace, namePrefix and the ConfigMap's literals (images and replicas change nothing they
    read). A field that could change more is refused, so that no overlay escapes the checks."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "resources", "namespace", "namePrefix",
                                    "labels", "images", "replicas", "configMapGenerator"}
    if unknown:
        raise ValueError(f"uses {sorted(unknown)}, which deploy/validate.py cannot render: teach it")
    documents = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        documents += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        literals = dict(line.split("=", 1) for line in generator.get("literals", []))
        existing = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == generator["name"]]
        if existing and generator.get("behavior") == "merge":
            existing[0]["data"].update(literals)
        else:
            documents.append({"kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": literals})
    for document in documents:
        document["metadata"]["name"] = kustomization.get("namePrefix", "") + document["metadata"]["name"]
    return documents


def least_privilege_problems():
    problems = []
    for directory in [DEPLOY / "k8s" / "base", *sorted((DEPLOY / "k8s" / "overlays").iterdir())]:
        where = directory.relative_to(DEPLOY)
        try:
            documents = render(directory)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        prefix = yaml.safe_load((directory / "kustomization.yaml").read_text()).get("namePrefix", "")
        seen = set()
        for document in documents:
            name = document["metadata"]["name"].removeprefix(prefix)
            if document["kind"] == "ConfigMap":
                problems += [f"{where}: ConfigMap {name} holds {key}: a credential every pod reads"
                             for key in document.get("data", {}) if CREDENTIAL.match(key)]
            if document["kind"] not in ("Deployment", "Job"):
                continue
            seen.add(name)
            pod = document["spec"]["template"]["spec"]
            files, env = secrets_read(pod)
            if files != {SECRETS.get(name)}:
                problems.append(f"{where}: {name} reads the Secrets {sorted(files)}, not its own only ({SECRETS.get(name)})")
            if env:
                problems.append(f"{where}: {name} has the Secrets {sorted(env)} in its environment, not as files")
            problems += [f"{where}: {name} has {e['name']} as a literal: a credential belongs in its Secret"
                         for c in pod["containers"] for e in c.get("env", [])
                         if CREDENTIAL.match(e["name"]) and "value" in e]
        problems += [f"{where}: no workload {name}" for name in SECRETS if name not in seen]
    return problems


def base_documents():
    for path in sorted((DEPLOY / "k8s" / "base").glob("*.yaml")):
        yield from (d for d in yaml.safe_load_all(path.read_text()) if d)


def connection_budget_problems():
    """At maxReplicas, every Deployment's pool (BOTFLEET_DB_POOL_SIZE, else 16) per pod, plus a
    connection per Job, must fit the primary's max_connections less the superusers' reserve."""
    documents = list(base_documents())
    most = {d["spec"]["scaleTargetRef"]["name"]: d["spec"]["maxReplicas"]
            for d in documents if d["kind"] == "HorizontalPodAutoscaler"}
    used, lines = 0, []
    for d in documents:
        if d["kind"] == "Job":
            used += 1
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        env = {e["name"]: e.get("value") for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
        pods, pool = most.get(name, d["spec"].get("replicas", 1)), int(env.get("BOTFLEET_DB_POOL_SIZE") or 16)
        used += pods * pool
        lines.append(f"{name} {pods} × {pool}")
    cluster = next(d for d in documents if d["kind"] == "Cluster")
    parameters = cluster["spec"]["postgresql"]["parameters"]
    allowed = int(parameters["max_connections"]) - int(parameters.get("superuser_reserved_connections", 3))
    if used > allowed:
        return [f"k8s/base: {used} Postgres connections at maxReplicas ({', '.join(lines)}, and the Jobs) "
                f"over the {allowed} max_connections allows"]
    return []


def main():
    version = sys.argv[1] if len(sys.argv) > 1 else "1.30"
    problems = (compose_problems() + kubernetes_problems(version) + least_privilege_problems()
                + connection_budget_problems())
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems" if problems else "deploy/: compose and Kubernetes files valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
