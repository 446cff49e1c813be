"""Lab spec rows and annotations exactly as labd has always stored them.

The text is literal, captured from labd before the spec was typed (the
service's ``_lab_spec`` and the builder's ``_spec_annotation``), and from
its first version, whose rows had ``"quota": null`` for a create without
the hub's identity.  The spec's own tests, the store's and adoption's hold
labd to it, so that an older labd reads what this one writes.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "BARE_ROW",
    "FIRST_ROW",
    "ROWS",
    "TODAY_ANNOTATION",
    "TODAY_HUB_ANNOTATION",
    "TODAY_HUB_ROW",
    "TODAY_ROW",
    "WEEKLY",
    "old_spec_annotation",
]

WEEKLY = "registry.example/sciplat/lab:w_2026_47"

# A create with a user's token: identity and quota from the configuration.
TODAY_ROW = (
    '{"options": {"image": "registry.example/sciplat/lab:w_2026_47", "size": "medium",'
    ' "enable_debug": false, "reset_user_env": true}, "resources": {"limits": {"cpu": 2.0,'
    ' "memory": 8589934592}, "requests": {"cpu": 0.5, "memory": 2147483648}}, "user":'
    ' {"username": "alice", "name": "Alice", "uid": 1101, "gid": 1101, "groups": [{"name":'
    ' "alice", "id": 1101}]}, "quota": {"cpu": 2.0, "memory": 8589934592, "spawn": true},'
    ' "image_request": {"field": "image_list", "value":'
    ' "registry.example/sciplat/lab:w_2026_47"}, "env": {"JUPYTERHUB_SERVICE_PREFIX":'
    ' "/user/alice/", "LANG": "C"}}'
)
TODAY_ANNOTATION = (
    '{"image_request":{"field":"image_list","value":"registry.example/sciplat/lab:w_2026_47"},'
    '"options":{"enable_debug":false,"image":"registry.example/sciplat/lab:w_2026_47",'
    '"reset_user_env":true,"size":"medium"},"quota":{"cpu":2.0,"memory":8589934592,'
    '"spawn":true},"resources":{"limits":{"cpu":2.0,"memory":8589934592},"requests":'
    '{"cpu":0.5,"memory":2147483648}},"user":{"gid":1101,"groups":[{"id":1101,"name":'
    '"alice"}],"name":"Alice","uid":1101,"username":"alice"}}'
)

# A create by the hub, with its identity (a group without a GID, a name
# outside ASCII) and an image class, replacing a failed lab.
TODAY_HUB_ROW = (
    '{"options": {"image": "registry.example/sciplat/lab:w_2026_47", "size": "medium",'
    ' "enable_debug": true, "reset_user_env": true}, "resources": {"limits": {"cpu": 2.0,'
    ' "memory": 8589934592}, "requests": {"cpu": 0.5, "memory": 2147483648}}, "user":'
    ' {"username": "alice", "name": "Alice \\u00c4", "uid": 2000, "gid": 2001, "groups":'
    ' [{"name": "g", "id": 3000}, {"name": "nogid", "id": null}]}, "quota": {"cpu": 4.0,'
    ' "memory": 17179869184, "spawn": true}, "image_request": {"field": "image_class",'
    ' "value": "recommended"}, "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"},'
    ' "previous_lab": "0b9e8a3c-6d1f-4f53-9c8e-2a7d5b4c3e21"}'
)
TODAY_HUB_ANNOTATION = (
    '{"image_request":{"field":"image_class","value":"recommended"},"options":'
    '{"enable_debug":true,"image":"registry.example/sciplat/lab:w_2026_47",'
    '"reset_user_env":true,"size":"medium"},"quota":{"cpu":4.0,"memory":17179869184,'
    '"spawn":true},"resources":{"limits":{"cpu":2.0,"memory":8589934592},"requests":'
    '{"cpu":0.5,"memory":2147483648}},"user":{"gid":2001,"groups":[{"id":3000,"name":"g"},'
    '{"id":null,"name":"nogid"}],"name":"Alice \\u00c4","uid":2000,"username":"alice"}}'
)

# labd's first rows: "quota" null without the hub's identity.
FIRST_ROW = (
    '{"options": {"image": "registry.example/sciplat/lab:w_2026_47", "size": "small",'
    ' "enable_debug": false, "reset_user_env": false}, "resources": {"limits": {"cpu": 1.0,'
    ' "memory": 4294967296}, "requests": {"cpu": 0.25, "memory": 1073741824}}, "user":'
    ' {"username": "bob", "name": null, "uid": 1000, "gid": 1000, "groups": []}, "quota":'
    ' null, "image_request": {"field": "image_class", "value": "recommended"}, "env":'
    ' {"JUPYTERHUB_SERVICE_PREFIX": "/user/bob/"}}'
)

# Older still, or adopted from an old annotation: no quota, no image request.
BARE_ROW = (
    '{"options": {"image": "registry.example/sciplat/lab:w_2026_47", "size": "small",'
    ' "enable_debug": false, "reset_user_env": false}, "resources": {"limits": {"cpu": 1.0,'
    ' "memory": 4294967296}, "requests": {"cpu": 0.25, "memory": 1073741824}}, "user":'
    ' {"username": "bob", "name": null, "uid": 1000, "gid": 1000, "groups": []}, "env":'
    ' {"JUPYTERHUB_SERVICE_PREFIX": "/user/bob/"}}'
)

ROWS = {"today": TODAY_ROW, "hub": TODAY_HUB_ROW, "first": FIRST_ROW, "bare": BARE_ROW}


def old_spec_annotation(spec: dict[str, Any]) -> str:
    """The annotation as labd wrote it before the spec was typed (`_spec_annotation`)."""
    spec = {k: v for k, v in spec.items() if k not in ("env", "previous_lab")}
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))
