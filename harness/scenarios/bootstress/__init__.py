"""harness.scenarios.bootstress.run"""
