"""harness.pytestplugin"""
