"""harness.scenarios.hotplug.plug"""
