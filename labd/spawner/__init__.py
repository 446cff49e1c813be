"""The JupyterHub spawner for labd; it runs inside the hub.

Configure JupyterHub with ``c.JupyterHub.spawner_class =
"labd.spawner.LabdSpawner"``.  This package imports nothing else of labd
(the layer contract in ``.importlinter`` checks it), so the hub needs only
labd's client side.
"""

from labd.spawner.spawner import LabdSpawner, LabEvent, LabSpawnError, read_events

__all__ = ["LabEvent", "LabSpawnError", "LabdSpawner", "read_events"]
