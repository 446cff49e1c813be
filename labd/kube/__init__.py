"""labd's Kubernetes layer: the object builder, the calls, the watches.

- `labd.kube.builder`: the pure function from a lab to its manifests.
- `labd.kube.client`: the API client, `KubeError`, retries and call counts.
- `labd.kube.listing`: paged LISTs of any kind, read as plain JSON.
- `labd.kube.storage`: idempotent creates and deletes, and the LISTs of the
  reconciler (`LabKube`).
- `labd.kube.watching`: the cluster-wide pod and Event watches.
"""
