"""Surge's toolkit for asynchronous work. No use-case knowledge lives here."""
