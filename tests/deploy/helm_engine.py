"""Helm's own engine (Helm v4's Go library, embedded in the helm-python-sdk wheel) for
`cargo xtask deploy-check`: no helm binary and no cluster needed.

    helm_engine.py render CHART VALUES RELEASE NAMESPACE   -> [{"source", "doc"}] as JSON
    helm_engine.py template CHART VALUES RELEASE NAMESPACE -> the manifests' YAML text
    helm_engine.py lint CHART VALUES NAMESPACE             -> Helm's lint report as JSON
    helm_engine.py package CHART DESTINATION                    -> the archive's path

VALUES is a file of values, YAML (such as the chart's ci/*-values.yaml) or JSON.
A failure prints Helm's own message on one line and exits 1.
"""

import json
import sys

import helm_python
import yaml


def manifests(chart, values, release, namespace):
    rendered = helm_python.Chart.load(chart).render(
        values, name=release, namespace=namespace, is_install=True
    )
    # NOTES.txt is what `helm install` prints, not a manifest.
    return {s: text for s, text in rendered.items() if not s.endswith("/NOTES.txt")}


def template(chart, values, release, namespace):
    """The rendered templates' text, as `helm template` prints it."""
    rendered = manifests(chart, values, release, namespace)
    # The Namespace first: `kubectl apply -f` creates objects in the file's order.
    order = sorted(rendered, key=lambda source: (not source.endswith("/namespace.yaml"), source))
    return "".join(
        f"---\n# Source: {source}\n{rendered[source].strip()}\n"
        for source in order
        if rendered[source].strip()
    )


def render(chart, values, release, namespace):
    rendered = manifests(chart, values, release, namespace)
    resources = []
    for source in sorted(rendered):
        for doc in yaml.safe_load_all(rendered[source]):
            if doc is not None:
                resources.append({"source": source, "doc": doc})
    return resources


def main(argv):
    verb, chart, *rest = argv
    if verb in ("render", "template"):
        values_file, release, namespace = rest
        with open(values_file, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        if verb == "template":
            return template(chart, values, release, namespace)
        return render(chart, values, release, namespace)
    if verb == "lint":
        values_file, namespace = rest
        with open(values_file, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
        return helm_python.lint(
            chart, values, strict=True, namespace=namespace, kube_version="v1.28.0"
        )
    if verb == "package":
        (destination,) = rest
        return helm_python.package(chart, destination=destination)
    raise SystemExit(f"helm_engine.py: unknown verb {verb}")


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv[1:])))
    except helm_python.HelmError as err:
        print(" ".join(str(err).split()), file=sys.stderr)
        sys.exit(1)
