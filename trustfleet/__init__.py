"""TrustFleet: trustworthy logistics data from the sensor to the dispute.

This package holds what every part shares: the fixed wire formats (DESIGN.md §4) and the
umbrella command line (`trustfleet`). The parts themselves live in `edge_agent`, `hsm`,
`ledger_node` and `firmware_shims`.
"""

__version__ = "0.1.0"
