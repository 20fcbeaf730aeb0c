"""harness.guest"""
