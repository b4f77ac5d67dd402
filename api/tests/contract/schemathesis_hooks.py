"""What schemathesis cannot read from api/openapi.yaml, loaded by test_schemathesis.py.

- A consistency parameter goes as a header or as a query parameter, not both
  (400 bad_request, api/tests/it/freshness.rs), and Max-Wait needs a
  Min-Position: OpenAPI says neither, so a valid case is made to keep them.
- A 503 is a documented answer of the key routes, not a server error, when it
  is a freshness refusal (this redis-server has no heartbeat and is a master:
  any Max-Staleness is age_unknown, a Min-Position of another history
  position_other_history). not_a_server_error allows 503 (schemathesis.toml);
  `freshness_refusal_only` fails every other 503: one to a request that asked
  for no freshness, or one with another code (unavailable: Redis is up here).
"""

import re

import schemathesis

# Header form → query form.
CONSISTENCY = {"Max-Staleness": "max-staleness", "Min-Position": "min-position", "Max-Wait": "max-wait"}
TOKEN = re.compile(r"^[0-9a-f]{40}:[0-9]{1,19}$")
REFUSALS = {"too_stale", "age_unknown", "position_not_reached", "position_other_history"}


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query if case.query is not None else {}
    headers = case.headers if case.headers is not None else {}
    for header, parameter in CONSISTENCY.items():
        if header in headers and parameter in query:
            del headers[header]
    if not case._meta or case._meta.generation.mode != "positive":
        return
    # The coverage phase sends `Min-Position: 0` as valid (the header's
    # pattern is not applied to it): a valid case gets a token of it.
    if "Min-Position" in headers and not TOKEN.match(str(headers["Min-Position"])):
        headers["Min-Position"] = "0" * 40 + ":0"
    # Max-Wait bounds a Min-Position wait, and alone is a 400.
    if "Min-Position" not in headers and "min-position" not in query:
        headers.pop("Max-Wait", None)
        query.pop("max-wait", None)


@schemathesis.check
def freshness_refusal_only(ctx, response, case):
    """A 503 only to a request that asked for freshness, and only a refusal of it."""
    if response.status_code != 503:
        return None
    headers = {name.lower() for name in case.headers or {}}
    query = set(case.query or {})
    if not any(h.lower() in headers or q in query for h, q in CONSISTENCY.items()):
        raise AssertionError("503 to a request that asked for no freshness")
    if case.method.upper() != "HEAD":
        code = response.json().get("error")
        if code not in REFUSALS:
            raise AssertionError(f"503 `{code}`: not a freshness refusal")
    return None
