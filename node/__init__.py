"""Rota node package."""
