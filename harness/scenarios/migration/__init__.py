"""harness.scenarios.migration.hop"""
