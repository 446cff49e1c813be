"""The control loop: drives lab rows to what was asked, against Kubernetes.

- `labd.control.scheduler`: claims due labs and runs their steps.
- `labd.control.reconciler`: at start, matches the rows with what Kubernetes holds.
- `labd.control.leading`: takes leadership, and runs the watches and the
  reconciler while this replica leads.
"""
