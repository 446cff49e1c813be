"""The domain, at the bottom of labd: what a lab is, whatever stores or runs it.

- `labd.lab.machine`: the state machine (states, triggers, transitions).
- `labd.lab.records`: the lab row, its audit rows and progress events as values.
- `labd.lab.spec`: what was asked for a lab, typed; the only reader and writer of
  the ``labs.spec`` column and the ``labd.io/spec`` annotation.
- `labd.lab.protocol`: what the hub sends and reads (lab options, user, state).
- `labd.lab.naming`: usernames, namespaces and object names.
- `labd.lab.reference`, `labd.lab.quantity`: image references, resource quantities.
- `labd.lab.errors`: the errors of the hub protocol; `labd.lab.secrecy`: what is secret.
- `labd.lab.signals`, `labd.lab.metrics`: in-process wake-ups and Prometheus metrics.

Nothing here imports another labd package (the layer contract in
``.importlinter`` checks it).
"""
