"""What a PromQL expression selects, read well enough for the kit's own rules
and dashboard: the series selectors (metric and matchers) and the labels it
groups or joins by. Used by deploy/tests/test_monitoring.py (every selector
names its job) and by the e2e (every metric and label exists on the live pods).
"""

import re

METRIC = re.compile(r"\b((?:read_api|redis|kube)_[a-zA-Z0-9_]+)\b(\{)?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
ANNOTATION_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


def blank_strings(expr: str) -> str:
    """EXPR with every string literal's content blanked, same length: names inside strings are not metrics."""
    return re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expr)


def vector_selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, the matchers between its braces, as written) of every series EXPR selects."""
    blanked = blank_strings(expr)
    found = []
    for match in METRIC.finditer(blanked):
        if not match.group(2):
            found.append((match.group(1), ""))
            continue
        end = blanked.index("}", match.end())
        found.append((match.group(1), expr[match.end() : end]))
    return found


def matchers(text: str) -> list[tuple[str, str, str]]:
    """(label, operator, value) of a selector's matchers."""
    return MATCHER.findall(text)


def grouping_labels(expr: str) -> set[str]:
    """The labels EXPR aggregates, joins or groups by."""
    groups = GROUPING.findall(blank_strings(expr))
    return {label.strip() for group in groups for label in group.split(",") if label.strip()}
