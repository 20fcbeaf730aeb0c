"""Topologies: what machine to build (data), its QEMU arguments and the model of it.

- model.py     Topology / Device / Address (frozen data), cache_key()
- load.py      TOML or dict -> Topology, with validation (see its docstring for the format)
- layout.py    validation rules, addresses and chassis numbers made explicit
- render.py    Topology -> QEMU argv (driver facts: harness.qemu.drivers) (the only place that writes -device/-machine)
- expect.py    Topology -> the PciView the guest should see (the model view)

The views themselves (their shape, QEMU's and the guest's, and the diff of all
three) live in harness.views.
"""

from __future__ import annotations

from harness.topology.data import Address, Device, Topology, machine_kind
from harness.topology.expect import expected_view
from harness.topology.load import load_topology, topology_from_dict
from harness.topology.placement import resolve, validate
from harness.topology.render import RenderedMachine, ScratchDisk, render

__all__ = [
    "Address", "Device", "RenderedMachine", "ScratchDisk", "Topology", "default_topology",
    "expected_view", "load_topology", "machine_kind", "render", "resolve",
    "topology_from_dict", "validate",
]

DEFAULT_DISK_BYTES = 64 * 1024 * 1024


def default_topology(machine: str = "q35") -> Topology:
    """The machine with one 64 MiB virtio-blk disk on its root bus (plus the mgmt NIC)."""
    machine_kind(machine)  # a TopologyError names the accepted machine types
    topology = Topology(machine=machine, devices=(
        Device(id="disk1", driver="virtio-blk-pci", disk=DEFAULT_DISK_BYTES),))
    validate(topology)
    return topology
