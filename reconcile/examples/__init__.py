"""Example applications shipped with reconcile (``reconcile demo`` runs the shop)."""
