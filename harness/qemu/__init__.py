"""harness.qemu"""
