"""Hostile and broken submissions for the trusted grader (see cases.py)."""
