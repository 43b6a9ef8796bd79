"""Parse a /metrics text (stdin) with prometheus_client's text parser and print
its families as JSON: [{"name", "type", "samples": [{"name", "labels", "value"}]}].
A text the parser refuses makes this exit non-zero with its error."""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append(
        {
            "name": f.name,
            "type": f.type,
            "help": f.documentation,
            "samples": [
                {
                    "name": s.name,
                    "labels": s.labels,
                    "value": None if math.isnan(s.value) else s.value,
                }
                for s in f.samples
            ],
        }
    )
json.dump(families, sys.stdout)
