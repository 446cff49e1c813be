"""Which image a lab runs: the catalog of lab images and the registry it reads.

- `labd.images.catalog`: resolves a spawn's image choice; the menu's images.
- `labd.images.registry`: the Docker Registry HTTP API v2 client.

Image references themselves are domain values: `labd.lab.reference`.
"""
