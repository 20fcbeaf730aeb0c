"""harness.scenarios.intx.stress"""
