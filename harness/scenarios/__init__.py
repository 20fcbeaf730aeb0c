"""harness.scenarios"""
