"""Rota storage package."""
