"""Rota simulations package."""
