"""harness.topology"""
