"""Policies, schedules, retention, recovery points, jobs and their live progress, alerts."""
