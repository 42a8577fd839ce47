"""Rota web package."""
