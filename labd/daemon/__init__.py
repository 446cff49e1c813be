"""The running daemon: wiring the layers together, serving, and ``labd dev``.

- `labd.daemon.factory`: builds one `Labd` from a configuration.
- `labd.daemon.serving`: ``labd serve``: uvicorn, signals, systemd.
- `labd.daemon.dev`: ``labd dev``: SQLite plus the simulated cluster.
- `labd.daemon.logs`, `labd.daemon.systemd`: structlog set-up; sd_notify.
"""
