"""Offline assets, labelled texts, prompts and preference pairs."""
