"""Parses Prometheus text exposition (stdin) with the official Python client's parser and
prints the families as JSON: [{name, type, samples: [{name, labels, value}]}]. Used by the
nginx end-to-end test to check auth:metrics() (run with Debian's /usr/bin/python3 and its
python3-prometheus-client)."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples],
    })
json.dump(families, sys.stdout)
