"""Audit events: who changed or was refused what, when, and why."""
