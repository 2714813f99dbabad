"""The Datadog Agent's own OpenMetrics check (OpenMetricsBaseCheckV2, from datadog-checks-base),
run once against a live endpoint with the stub aggregator of the Agent's own check tests, for
tests/tests/datadog.rs.

    openmetrics_check.py CHECKS.json   -> what the Agent would receive, as JSON on stdout

CHECKS.json is the Autodiscovery annotation's value (`{"openmetrics": {"init_config": ...,
"instances": [...]}}`) with its template variables already resolved. The output:

    {"metrics": [{"name", "type", "value", "tags"}], "service_checks": [{"name", "status",
     "message"}], "warnings": [...], "error": null or the check's error report}

The stub refuses tags Datadog reserves (version, host, env, service, ...) as the Agent's own
check tests do: such a tag makes the run fail, and `error` says which.
"""

import json
import sys

from datadog_checks.base import OpenMetricsBaseCheckV2
from datadog_checks.base.stubs import aggregator


def main(path):
    with open(path, encoding="utf-8") as f:
        checks = json.load(f)
    config = checks["openmetrics"]
    (instance,) = config["instances"]
    check = OpenMetricsBaseCheckV2("openmetrics", config["init_config"], [instance])
    aggregator.reset()
    error = check.run()
    metrics = [
        {
            "name": stub.name,
            "type": aggregator.METRIC_ENUM_MAP_REV[stub.type],
            "value": stub.value,
            "tags": sorted(stub.tags),
        }
        for name in aggregator.metric_names
        for stub in aggregator.metrics(name)
    ]
    service_checks = [
        {"name": stub.name, "status": stub.status, "message": stub.message}
        for name in sorted(aggregator._service_checks)
        for stub in aggregator.service_checks(name)
    ]
    return {
        "metrics": metrics,
        "service_checks": service_checks,
        "warnings": list(check.warnings),
        "error": json.loads(error) if error else None,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
