"""Label and field selectors, per namespace and across namespaces."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.kubeapi import make_namespace, manifest

_MAPS = {
    "a": {"app": "lab", "tier": "web"},
    "b": {"app": "lab", "tier": "db"},
    "c": {"app": "hub"},
    "d": {},
}


@pytest.fixture
async def labelled(core: CoreV1Api, namespace: str) -> str:
    for name, labels in _MAPS.items():
        await core.create_namespaced_config_map(
            namespace, manifest({"metadata": {"name": name, "labels": labels}})
        )
    return namespace


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=lab", ["a", "b"]),
        ("app==lab", ["a", "b"]),
        ("app!=lab", ["c", "d", "kube-root-ca.crt"]),
        ("tier in (web,db)", ["a", "b"]),
        ("tier in (web)", ["a"]),
        ("app notin (lab)", ["c", "d", "kube-root-ca.crt"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c", "d", "kube-root-ca.crt"]),
        ("app=lab,tier!=db", ["a"]),
        ("app in (lab, hub),!tier", ["c"]),
        ("", ["a", "b", "c", "d", "kube-root-ca.crt"]),
    ],
)
async def test_label_selectors(
    core: CoreV1Api, labelled: str, selector: str, expected: list[str]
) -> None:
    listing = await core.list_namespaced_config_map(labelled, label_selector=selector)
    assert [c.metadata.name for c in listing.items] == expected


@pytest.mark.parametrize("selector", ["app=(x", "app in lab", "a b", "app=x y"])
async def test_malformed_label_selector_is_a_bad_request(
    core: CoreV1Api, labelled: str, selector: str
) -> None:
    with pytest.raises(ApiException) as caught:
        await core.list_namespaced_config_map(labelled, label_selector=selector)
    assert caught.value.status == 400


async def test_selectors_across_namespaces(core: CoreV1Api, labelled: str) -> None:
    other = await make_namespace(core, "lab-two")
    await core.create_namespaced_config_map(
        other, manifest({"metadata": {"name": "a", "labels": {"app": "lab"}}})
    )
    listing = await core.list_config_map_for_all_namespaces(label_selector="app=lab")
    found = [(c.metadata.namespace, c.metadata.name) for c in listing.items]
    assert found == [(labelled, "a"), (labelled, "b"), (other, "a")]
    by_namespace = await core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.namespace={other},metadata.name!=kube-root-ca.crt"
    )
    assert [(c.metadata.namespace, c.metadata.name) for c in by_namespace.items] == [(other, "a")]
    by_name = await core.list_config_map_for_all_namespaces(field_selector="metadata.name=b")
    assert [(c.metadata.namespace, c.metadata.name) for c in by_name.items] == [(labelled, "b")]


async def test_field_selector_on_event_involved_object(core: CoreV1Api, namespace: str) -> None:
    for index, target in enumerate(("nb-1", "nb-2", "nb-1")):
        await core.create_namespaced_event(
            namespace,
            manifest(
                {
                    "metadata": {"name": f"ev-{index}"},
                    "involvedObject": {"kind": "Pod", "name": target, "namespace": namespace},
                    "reason": "Test",
                    "message": "m",
                }
            ),
        )
    events = await core.list_namespaced_event(namespace, field_selector="involvedObject.name=nb-1")
    assert [e.metadata.name for e in events.items] == ["ev-0", "ev-2"]
    others = await core.list_event_for_all_namespaces(
        field_selector="involvedObject.name!=nb-1,involvedObject.kind=Pod"
    )
    assert [e.metadata.name for e in others.items] == ["ev-1"]


async def test_unsupported_field_is_a_bad_request(core: CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        await core.list_namespaced_config_map(namespace, field_selector="data.A=1")
    assert caught.value.status == 400
    assert "field label not supported" in str(caught.value.body)


async def test_relabelled_objects_are_found_by_their_new_labels(
    core: CoreV1Api, labelled: str
) -> None:
    await core.patch_namespaced_config_map(
        "a", labelled, {"metadata": {"labels": {"app": "hub", "tier": "web"}}}
    )
    await core.delete_namespaced_config_map("b", labelled)
    assert (await core.list_namespaced_config_map(labelled, label_selector="app=lab")).items == []
    hubs = await core.list_namespaced_config_map(labelled, label_selector="app in (hub)")
    assert [c.metadata.name for c in hubs.items] == ["a", "c"]
