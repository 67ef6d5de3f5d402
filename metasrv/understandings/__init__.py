"""Understandings: rule files, applying them, registrations and mirrors, override and check."""
